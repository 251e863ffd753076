/* Listeners of connections: the net layer's accept loop, whose peers are ura_conn. */
#include "listener.h"

int ura_listener_new(ura_loop *loop, const char *address, ura_accept_fn fn, void *ctx,
		     ura_listener **out)
{
	return ura__listener_new(loop, address, fn, ctx, ura_conn_new, out);
}
