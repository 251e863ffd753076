/*
 * nop suite: the per-task cost of the runtime.
 *
 * A NOP does no kernel work beyond a submission and a completion, so the difference
 * between ura NOP tasks and raw liburing NOPs is what the runtime adds per task: the
 * registry slot, the session accounting, the CQE copy and the callback. Both sides
 * submit a batch, then enter and reap until the whole batch has completed: ura with
 * ura_loop_run_once(loop, true), raw with one io_uring_submit_and_wait for the batch.
 * NOPs complete during the submit, so both need one enter per batch.
 *
 * ura registers its ring fd (io_uring_enter then skips a file lookup and reference),
 * which plain liburing code does not do unless asked. So there are two raw contenders:
 * "raw-liburing" as most code is written, and "raw-regfd" with the ring fd registered
 * too, which isolates what ura adds per task from what it saves per enter.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

/* Operations per run: batch 1 costs one syscall per op, so it gets fewer to keep runs
 * of every batch size in the same range (tens to hundreds of milliseconds). */
#define NOP_OPS 1000000u
#define NOP_OPS_QUICK 200000u
#define NOP_OPS_BATCH1 200000u
#define NOP_OPS_BATCH1_QUICK 50000u
/* Same ring sizes on both sides: ura's defaults. */
#define NOP_SQ 256u
#define NOP_CQ (8u * NOP_SQ)

static const unsigned batches[] = { 1, 32, 128 };

struct nop_ura {
	ura_loop *loop;
	ura_session *s;
	unsigned batch;
	uint64_t ops;
	uint64_t done;   /* completions seen by the callback */
	uint64_t errors; /* completions with res != 0 */
};

struct nop_raw {
	struct io_uring ring;
	unsigned batch;
	uint64_t ops;
};

static void nop_done(ura_session *s, ura_task t, int32_t res, uint32_t cqe_flags, void *arg)
{
	struct nop_ura *u = arg;
	u->done++;
	if (res != 0)
		u->errors++;
}

static int ura_run(void *ctx, struct bench_time *t)
{
	struct nop_ura *u = ctx;
	struct bench_clock clk;
	u->done = 0;
	bench_clock_start(&clk);
	for (uint64_t sent = 0; sent < u->ops; sent += u->batch) {
		for (unsigned i = 0; i < u->batch; i++) {
			int r = ura_nop(u->s, nop_done, u, NULL);
			if (r < 0)
				return r;
		}
		while (u->done < sent + u->batch) {
			int r = ura_loop_run_once(u->loop, true);
			if (r < 0)
				return r;
		}
	}
	bench_clock_stop(&clk, t);
	if (u->errors || u->done != u->ops) {
		bench_warn("nop: ura saw %llu completions, %llu with an error",
			   (unsigned long long)u->done, (unsigned long long)u->errors);
		return -EIO;
	}
	return 0;
}

static int raw_run(void *ctx, struct bench_time *t)
{
	struct nop_raw *x = ctx;
	struct io_uring *ring = &x->ring;
	struct bench_clock clk;
	uint64_t done = 0, errors = 0;
	bench_clock_start(&clk);
	for (uint64_t sent = 0; sent < x->ops; sent += x->batch) {
		for (unsigned i = 0; i < x->batch; i++) {
			struct io_uring_sqe *q = io_uring_get_sqe(ring);
			if (!q)
				return -EBUSY; /* cannot happen: batch < SQ size, all reaped */
			io_uring_prep_nop(q);
			io_uring_sqe_set_data64(q, 1);
		}
		while (done < sent + x->batch) {
			int r = io_uring_submit_and_wait(ring, (unsigned)(sent + x->batch - done));
			if (r < 0 && r != -EINTR)
				return r;
			unsigned head, seen = 0;
			struct io_uring_cqe *cqe;
			io_uring_for_each_cqe(ring, head, cqe) {
				seen++;
				if (cqe->res != 0)
					errors++;
			}
			io_uring_cq_advance(ring, seen);
			done += seen;
		}
	}
	bench_clock_stop(&clk, t);
	if (errors) {
		bench_warn("nop: raw saw %llu completions with an error",
			   (unsigned long long)errors);
		return -EIO;
	}
	return 0;
}

static uint64_t nop_ops(unsigned batch, bool quick)
{
	if (batch == 1)
		return quick ? NOP_OPS_BATCH1_QUICK : NOP_OPS_BATCH1;
	return quick ? NOP_OPS_QUICK : NOP_OPS;
}

int bench_nop(const struct bench_opts *opts)
{
	struct ura_loop_config cfg = { .sq_entries = NOP_SQ, .cq_entries = NOP_CQ };
	struct nop_ura u = { 0 };
	struct nop_raw x, xr;
	unsigned raw_flags = 0;
	char note[160];
	int r = ura_loop_new(&cfg, &u.loop);
	if (r < 0) {
		bench_warn("nop: ura_loop_new: %s", strerror(-r));
		return r;
	}
	r = bench_ring_init(&x.ring, NOP_SQ, NOP_CQ, &raw_flags);
	if (r < 0) {
		bench_warn("nop: raw ring setup: %s", strerror(-r));
		goto out_loop;
	}
	r = bench_ring_init(&xr.ring, NOP_SQ, NOP_CQ, &raw_flags);
	if (r < 0) {
		bench_warn("nop: raw ring setup: %s", strerror(-r));
		goto out_ring;
	}
	if (io_uring_register_ring_fd(&xr.ring) != 1)
		bench_warn("nop: raw-regfd: the kernel refused to register the ring fd");
	u.s = ura_session_shared(u.loop);
	bench_ring_note(note, sizeof(note), u.loop, &x.ring, raw_flags);

	struct bench_contender c[] = {
		{ "ura", ura_run, &u, 0 },
		{ "raw-liburing", raw_run, &x, 0 },
		{ "raw-regfd", raw_run, &xr, 0 },
	};
	enum { NC = sizeof(c) / sizeof(c[0]) };
	struct bench_time *t = calloc(NC * (size_t)opts->rounds, sizeof(*t));
	if (!t) {
		r = -ENOMEM;
		goto out_ring;
	}
	for (size_t b = 0; b < sizeof(batches) / sizeof(batches[0]); b++) {
		/* Whole batches only, so both sides do exactly the same work. */
		uint64_t ops = nop_ops(batches[b], opts->quick);
		u.batch = x.batch = xr.batch = batches[b];
		u.ops = x.ops = xr.ops = ops - ops % batches[b];
		for (size_t i = 0; i < NC; i++)
			c[i].ops = u.ops;
		char param[48];
		snprintf(param, sizeof(param), "batch=%u", batches[b]);
		char label[64];
		snprintf(label, sizeof(label), "nop %s", param);
		r = bench_rounds(c, NC, opts->rounds, label, t);
		if (r < 0)
			goto out_t;
		r = bench_record("nop", param, c, NC, opts->rounds, t, note);
		if (r < 0)
			goto out_t;
	}
	bench_print_table("nop");
out_t:
	free(t);
	io_uring_queue_exit(&xr.ring);
out_ring:
	io_uring_queue_exit(&x.ring);
out_loop:
	ura_loop_free(u.loop);
	return r;
}
