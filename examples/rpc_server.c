/*
 * An echo RPC service built on ura_main: every request is answered with its own payload.
 *
 *   rpc_server [ADDRESS]        ADDRESS defaults to tcp:127.0.0.1:0 (a free port)
 *
 * Prints "listening on ADDRESS" once bound (with the port the kernel chose for :0), serves
 * until SIGTERM or SIGINT, shuts down gracefully and exits 0. Try it with rpc_client.
 */
#include <stdio.h>
#include <string.h>

#include <ura.h>

/* One handler for every peer: requests in, replies out. Runs on the loop thread. */
static void on_event(ura_conn *peer, const struct ura_event *ev, void *ctx)
{
	(void)ctx;
	if (ev->type == URA_EVENT_MESSAGE) {
		/* ev->msg is borrowed for this call; ura_conn_reply takes its own reference.
		 * Messages are immutable, so the request itself can be the reply: no copy. A
		 * request left unanswered would hold a transaction (and so delay shutdown)
		 * until answered, released, or the connection ends. */
		if (ura_msg_expects_reply(ev->msg) && ura_conn_reply(peer, ev->msg, ev->msg) < 0)
			ura_conn_cancel(peer); /* cannot answer (out of memory): give up the peer */
		return;
	}
	switch (ev->error) {
	case URA_ERROR_TERMINATION_IMMINENT:
		/* ura_main is shutting down. Every reply here is immediate, so there is nothing
		 * to wind down; a service with work in progress would finish it now, and
		 * ura_main waits (bounded) for its transactions. */
		break;
	case URA_ERROR_CONNECTION_INVALID:
		/* The final event: nothing follows it. Drop the reference on_accept kept. */
		ura_conn_unref(peer);
		break;
	case URA_ERROR_CONNECTION_INTERRUPTED:
		break; /* only clients by address see this; peers end with INVALID */
	}
}

/* A client connected. We own one reference to peer: keep it until the final event
 * (dropping it now would cancel the connection, which is how a service rejects a peer). */
static void on_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l, (void)ctx;
	ura_conn_set_event_handler(peer, on_event, NULL); /* before activating */
	ura_conn_activate(peer);
}

/* Called once listening: report where, so a script (or a human) can connect. */
static void on_ready(ura_loop *loop, ura_listener *l, void *ctx)
{
	(void)loop, (void)ctx;
	char address[160];
	ura_listener_address(l, address, sizeof(address));
	printf("listening on %s\n", address);
	fflush(stdout); /* stdout may be a pipe: say it now, not at exit */
}

int main(int argc, char **argv)
{
	const char *address = argc > 1 ? argv[1] : "tcp:127.0.0.1:0";
	struct ura_main_config cfg = {
		.shutdown_timeout_ms = 5000, /* how long a signal waits for open transactions */
		.ready = on_ready,
	};
	/* Blocks SIGTERM/SIGINT in this thread and reads them through the ring; returns once
	 * a signal has stopped the service and everything has drained. */
	int r = ura_main_with(address, &cfg, on_accept, NULL);
	if (r < 0) {
		fprintf(stderr, "rpc_server: %s: %s\n", address, strerror(-r));
		return 1;
	}
	printf("stopped\n");
	return 0;
}
