/* The README's example: one timeout task on the shared session. */
#include <errno.h>
#include <stdio.h>

#include <ura.h>

static void done(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags, (void)arg;
	printf("timer fired: %d (expected %d, -ETIME)\n", res, -ETIME);
}

int main(void)
{
	ura_loop *loop;
	if (ura_loop_new(NULL, &loop) < 0)
		return 1;
	ura_session *s = ura_session_shared(loop);
	ura_task t;
	int r = ura_timeout(s, 1000000 /* ns */, done, NULL, &t); /* 0 or -errno */
	if (r == 0)
		r = ura_loop_run(loop);                           /* until no work is left */
	ura_loop_free(loop);
	return r == 0 ? 0 : 1;
}
