/*
 * The rpc suite's server (`ura-bench serve rpc unix:@name`): ura listeners on the
 * abstract unix address given and on tcp:127.0.0.1 (a port the kernel picks), whose
 * connections answer every request with a new message holding a copy of its payload
 * (ura_conn_reply). Writes "ready <tcp address>" once both listen, then runs until it
 * is killed.
 */
#include <errno.h>
#include <stdio.h>

#include "ura.h"

#include "serve.h"

static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)ctx;
	if (ev->type == URA_EVENT_MESSAGE) {
		if (!ura_msg_expects_reply(ev->msg))
			return;
		ura_msg *reply;
		int r = ura_msg_new(ura_msg_data(ev->msg), ura_msg_len(ev->msg), &reply);
		if (r == 0) {
			r = ura_conn_reply(c, ev->msg, reply);
			ura_msg_unref(reply);
		}
		if (r < 0)
			fprintf(stderr, "rpc server: reply: %d\n", r);
		return;
	}
	/* The final event: nothing follows it, so the accept callback's reference goes. */
	if (ev->error == URA_ERROR_CONNECTION_INVALID)
		ura_conn_unref(c);
}

static void on_peer(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l, (void)ctx;
	if (ura_conn_set_event_handler(peer, on_event, NULL) < 0) {
		ura_conn_unref(peer);
		return;
	}
	ura_conn_activate(peer);
}

int rpc_serve(const char *address)
{
	ura_loop *loop;
	ura_listener *lu = NULL, *lt = NULL;
	int r = ura_loop_new(NULL, &loop);
	if (r < 0)
		return r;
	r = ura_listener_new(loop, address, on_peer, NULL, &lu);
	if (r == 0)
		r = ura_listener_new(loop, "tcp:127.0.0.1:0", on_peer, NULL, &lt);
	if (r == 0) {
		char tcp[160];
		ura_listener_address(lt, tcp, sizeof(tcp));
		printf("ready %s\n", tcp);
		fflush(stdout);
		r = ura_loop_run(loop); /* until killed, or an error */
	}
	ura_listener_unref(lt);
	ura_listener_unref(lu);
	ura_loop_free(loop);
	return r;
}
