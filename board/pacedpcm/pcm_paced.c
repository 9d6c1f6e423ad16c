/*
 * pcm_paced.c - software-paced ALSA playback PCM (alsa-lib ioplug plugin)
 *
 * A playback-only PCM that behaves like a real DAC behind an I2S/DMA engine,
 * but is driven by CLOCK_MONOTONIC_RAW instead of a sound card:
 *
 *   played(t) = base + floor((t - t0) * rate * (1 + ppm * 1e-6))
 *
 * where (t0, base) is the current "epoch" (set on start and on pause
 * release).  The frame at stream position k (counted from the last prepare)
 * enters the DAC at t0 + (k - base) / (rate * (1 + ppm * 1e-6)) and is heard
 * LATENCY_US later; that latency is *not* visible in avail/delay (as with a
 * real codec FIFO/filter).  Underruns are reported like the kernel does
 * (avail >= stop_threshold -> XRUN).  A timerfd provides the poll descriptor.
 *
 * Optionally every played frame is logged, with its exact timing, to a
 * binary file (see README.md in this directory for the format and
 * tests/harness/resonate_bench/paced_log.py for the reader).
 *
 * All timeline arithmetic is exact integer arithmetic in ns with 128-bit
 * intermediates: ppm is quantised to 1e-6 ppm (ppm_u = round(ppm * 1e6)) and
 *   F = rate * (1e12 + ppm_u)          (frames per 1e21 ns)
 *   frames(dt_ns)  = floor(dt_ns * F / 1e21)
 *   time_ns(k)     = ceil(k * 1e21 / F)   (first dt at which frames(dt) >= k)
 * so there is no accumulated rounding error however long it runs.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

#define PACED_LOG_MAGIC "PACEDLOG"
#define PACED_LOG_VERSION 1u

enum {
	REC_FORMAT = 1,
	REC_EPOCH = 2,
	REC_FRAMES = 3,
	REC_XRUN = 4,
	REC_STOP = 5,
	REC_PREPARE = 6,
};

enum {
	STOP_DROP = 0,    /* snd_pcm_drop() (or stop by the app) */
	STOP_DRAIN = 1,   /* drain finished: all written frames played */
	STOP_PAUSE = 2,   /* snd_pcm_pause(1) */
	STOP_CLOSE = 3,   /* closed while running */
	STOP_PREPARE = 4, /* snd_pcm_prepare() while running */
};

#ifndef __SIZEOF_INT128__
#error "pcm_paced.c needs 128-bit integer arithmetic (build on a 64-bit target)"
#endif

#define E12 1000000000000ULL
#define E9 1000000000ULL

typedef unsigned __int128 u128;

typedef struct {
	snd_pcm_ioplug_t io;

	/* configuration */
	double ppm;
	int64_t ppm_u;       /* ppm * 1e6, rounded */
	int64_t latency_ns;
	char *log_path;
	char *fail_path;     /* while this file exists the device is "unplugged" */

	/* hw/sw params */
	unsigned int rate, channels, bpf; /* bytes per frame */
	snd_pcm_format_t format;
	snd_pcm_uframes_t buffer_size, period_size, boundary;
	snd_pcm_uframes_t avail_min, stop_threshold;
	uint64_t F;          /* rate * (1e12 + ppm_u) */
	uint8_t *ring;       /* private copy of the ring buffer */
	snd_pcm_channel_area_t ring_areas[8];

	/* paced timeline (all positions: frames since the last prepare) */
	int running;         /* position advancing */
	int xrun;            /* latched until prepare */
	uint64_t pos;        /* current hw position (everything < pos is played+logged) */
	int64_t appl_cache;  /* last known application position (absolute) */
	int64_t t0;          /* epoch start, CLOCK_MONOTONIC_RAW ns */
	uint64_t base;       /* position at epoch start */

	int timer_fd;

	/* log */
	int log_fd;
	uint8_t *logbuf;
	size_t loglen, logcap;
	size_t last_frames_off;   /* offset of the last FRAMES record in logbuf, or SIZE_MAX */
	uint64_t last_frames_end; /* position following that record's last frame */
	uint64_t unflushed_frames;
} snd_pcm_paced_t;

/* ------------------------------------------------------------------ */
/* time helpers                                                        */

static int64_t now_raw(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const u128 E21 = (u128)E12 * E9;

/* frames consumed dt ns after an epoch start */
static uint64_t frames_at(const snd_pcm_paced_t *p, int64_t dt)
{
	if (dt <= 0 || !p->F)
		return 0;
	return (uint64_t)(((u128)(uint64_t)dt * p->F) / E21);
}

/* first dt (ns) at which frames_at(dt) >= k */
static int64_t time_of(const snd_pcm_paced_t *p, uint64_t k)
{
	if (!p->F)
		return 0;
	return (int64_t)(((u128)k * E21 + p->F - 1) / p->F);
}

/* ------------------------------------------------------------------ */
/* log                                                                 */

static void log_disable(snd_pcm_paced_t *p, const char *what, int err)
{
	SNDERR("paced: log %s failed on %s: %s; logging disabled", what,
	       p->log_path ? p->log_path : "?", strerror(err));
	if (p->log_fd >= 0)
		close(p->log_fd);
	p->log_fd = -1;
	p->loglen = 0;
	p->last_frames_off = SIZE_MAX;
}

static void log_write_all(snd_pcm_paced_t *p, const uint8_t *data, size_t len)
{
	while (len > 0 && p->log_fd >= 0) {
		ssize_t n = write(p->log_fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_disable(p, "write", errno);
			return;
		}
		data += n;
		len -= (size_t)n;
	}
}

static void log_flush(snd_pcm_paced_t *p)
{
	if (p->log_fd < 0)
		return;
	if (p->loglen)
		log_write_all(p, p->logbuf, p->loglen);
	p->loglen = 0;
	p->last_frames_off = SIZE_MAX;
	p->unflushed_frames = 0;
}

/* reserve len bytes at the end of the log buffer (flushing if needed) */
static uint8_t *log_reserve(snd_pcm_paced_t *p, size_t len)
{
	if (p->log_fd < 0)
		return NULL;
	if (p->loglen + len > p->logcap) {
		log_flush(p);
		if (p->log_fd < 0)
			return NULL;
		if (len > p->logcap) {
			uint8_t *nb = realloc(p->logbuf, len);
			if (!nb) {
				log_disable(p, "alloc", ENOMEM);
				return NULL;
			}
			p->logbuf = nb;
			p->logcap = len;
		}
	}
	uint8_t *r = p->logbuf + p->loglen;
	p->loglen += len;
	return r;
}

static void put_u32(uint8_t *b, uint32_t v) { memcpy(b, &v, 4); }   /* x86/ARM: little endian */
static void put_u64(uint8_t *b, uint64_t v) { memcpy(b, &v, 8); }
static void put_i64(uint8_t *b, int64_t v) { memcpy(b, &v, 8); }
static void put_f64(uint8_t *b, double v) { memcpy(b, &v, 8); }

static uint8_t *log_record(snd_pcm_paced_t *p, uint32_t type, uint32_t payload)
{
	uint8_t *r = log_reserve(p, 8 + payload);
	if (!r)
		return NULL;
	put_u32(r, type);
	put_u32(r + 4, payload);
	memset(r + 8, 0, payload);
	return r + 8;
}

static void log_format(snd_pcm_paced_t *p)
{
	uint8_t *r = log_record(p, REC_FORMAT, 56);
	if (!r)
		return;
	put_u32(r + 0, (uint32_t)p->format);
	put_u32(r + 4, p->channels);
	put_u32(r + 8, p->rate);
	put_u32(r + 12, p->bpf);
	put_f64(r + 16, p->ppm);
	put_i64(r + 24, p->ppm_u);
	put_i64(r + 32, p->latency_ns);
	put_u32(r + 40, CLOCK_MONOTONIC_RAW);
	put_u32(r + 44, (uint32_t)p->buffer_size);
	put_u32(r + 48, (uint32_t)p->period_size);
	log_flush(p);
}

static void log_epoch(snd_pcm_paced_t *p)
{
	uint8_t *r = log_record(p, REC_EPOCH, 16);
	if (!r)
		return;
	put_i64(r, p->t0);
	put_u64(r + 8, p->base);
	log_flush(p);
}

static void log_xrun(snd_pcm_paced_t *p, int64_t t_onset, uint64_t pos, int64_t t_detect)
{
	uint8_t *r = log_record(p, REC_XRUN, 24);
	if (!r)
		return;
	put_i64(r, t_onset);
	put_u64(r + 8, pos);
	put_i64(r + 16, t_detect);
	log_flush(p);
}

static void log_stop(snd_pcm_paced_t *p, int64_t t, uint64_t pos, uint32_t reason)
{
	uint8_t *r = log_record(p, REC_STOP, 24);
	if (!r)
		return;
	put_i64(r, t);
	put_u64(r + 8, pos);
	put_u32(r + 16, reason);
	log_flush(p);
}

static void log_prepare(snd_pcm_paced_t *p, int64_t t)
{
	uint8_t *r = log_record(p, REC_PREPARE, 8);
	if (!r)
		return;
	put_i64(r, t);
	log_flush(p);
}

/* copy n frames starting at stream position `from` out of the ring (zeros
 * for frames at/after appl, which only happens with stop_threshold >
 * buffer_size, i.e. "play silence on underrun" setups) */
static void ring_read(snd_pcm_paced_t *p, uint8_t *dst, uint64_t from, uint64_t n, int64_t appl)
{
	while (n > 0) {
		uint64_t slot = from % p->buffer_size;
		uint64_t chunk = p->buffer_size - slot;
		if (chunk > n)
			chunk = n;
		if ((int64_t)from >= appl) {
			memset(dst, 0, chunk * p->bpf);
		} else {
			if ((int64_t)(from + chunk) > appl)
				chunk = (uint64_t)(appl - (int64_t)from);
			memcpy(dst, p->ring + slot * p->bpf, chunk * p->bpf);
		}
		dst += chunk * p->bpf;
		from += chunk;
		n -= chunk;
	}
}

/* log the frames [from, to) which have just been played */
static void log_frames(snd_pcm_paced_t *p, uint64_t from, uint64_t to, int64_t appl)
{
	if (p->log_fd < 0 || to <= from || !p->ring)
		return;
	uint64_t n = to - from;
	/* extend the previous FRAMES record if it is still buffered and contiguous */
	if (p->last_frames_off != SIZE_MAX && p->last_frames_end == from &&
	    p->loglen + n * p->bpf <= p->logcap) {
		uint8_t *hdr = p->logbuf + p->last_frames_off;
		uint32_t plen, nf;
		memcpy(&plen, hdr + 4, 4);
		memcpy(&nf, hdr + 8 + 8, 4);
		if ((uint64_t)nf + n < UINT32_MAX / 2) {
			ring_read(p, p->logbuf + p->loglen, from, n, appl);
			p->loglen += n * p->bpf;
			put_u32(hdr + 4, plen + (uint32_t)(n * p->bpf));
			put_u32(hdr + 8 + 8, nf + (uint32_t)n);
			p->last_frames_end = to;
			goto done;
		}
	}
	{
		size_t off;
		uint8_t *r;
		/* keep records reasonably sized */
		uint64_t max_n = (p->logcap - 24) / p->bpf;
		if (n > max_n) {
			log_frames(p, from, from + max_n, appl);
			log_frames(p, from + max_n, to, appl);
			return;
		}
		r = log_reserve(p, 8 + 16 + n * p->bpf);
		if (!r)
			return;
		off = (size_t)(r - p->logbuf);
		put_u32(r, REC_FRAMES);
		put_u32(r + 4, (uint32_t)(16 + n * p->bpf));
		put_u64(r + 8, from);
		put_u32(r + 16, (uint32_t)n);
		put_u32(r + 20, 0);
		ring_read(p, r + 24, from, n, appl);
		p->last_frames_off = off;
		p->last_frames_end = to;
	}
done:
	p->unflushed_frames += n;
	/* flush at least every ~0.25 s of audio so a reader can follow */
	if (p->unflushed_frames >= p->rate / 4)
		log_flush(p);
}

/* ------------------------------------------------------------------ */
/* timeline                                                            */

/* absolute application position, unwrapped against our hw position */
static int64_t appl_abs(snd_pcm_paced_t *p)
{
	snd_pcm_uframes_t b = p->boundary ? p->boundary : (snd_pcm_uframes_t)LONG_MAX;
	snd_pcm_uframes_t hw = (snd_pcm_uframes_t)(p->pos % b);
	snd_pcm_uframes_t a = p->io.appl_ptr % b;
	snd_pcm_uframes_t d = (a + b - hw) % b;
	int64_t r;
	if (d > b / 2)
		r = (int64_t)p->pos - (int64_t)(b - d);
	else
		r = (int64_t)p->pos + (int64_t)d;
	p->appl_cache = r;
	return r;
}

static int no_xrun(const snd_pcm_paced_t *p)
{
	return p->boundary && p->stop_threshold >= p->boundary;
}

/* advance the hw position to time `now`, logging played frames and
 * detecting underrun / end of drain. */
static void advance(snd_pcm_paced_t *p, int64_t now, int64_t appl)
{
	uint64_t target;

	if (!p->running || p->xrun)
		return;
	target = p->base + frames_at(p, now - p->t0);
	if (target < p->pos)
		target = p->pos;

	if (p->io.state == SND_PCM_STATE_DRAINING) {
		/* the DAC stops at the last written frame */
		if ((int64_t)target > appl)
			target = appl > (int64_t)p->pos ? (uint64_t)appl : p->pos;
	} else if (!no_xrun(p)) {
		/* kernel rule: XRUN when avail >= stop_threshold */
		int64_t xrun_at = appl - (int64_t)p->buffer_size + (int64_t)p->stop_threshold;
		if ((int64_t)target >= xrun_at) {
			uint64_t xp = xrun_at > (int64_t)p->pos ? (uint64_t)xrun_at : p->pos;
			int64_t onset;
			log_frames(p, p->pos, xp, appl);
			onset = p->t0 + time_of(p, xp - p->base);
			p->pos = xp;
			p->xrun = 1;
			p->running = 0;
			log_xrun(p, onset, xp, now);
			return;
		}
	}
	if (target > p->pos) {
		log_frames(p, p->pos, target, appl);
		p->pos = target;
	}
}

static int64_t period_ns(const snd_pcm_paced_t *p)
{
	return time_of(p, p->period_size);
}

/* arm the poll timer to fire rel_ns from now (<= 0: at once), then every
 * interval_ns (0: once).  Setting the timer also clears pending expirations. */
static void timer_arm(snd_pcm_paced_t *p, int64_t rel_ns, int64_t interval_ns)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (rel_ns < 1)
		rel_ns = 1;
	its.it_value.tv_sec = rel_ns / 1000000000LL;
	its.it_value.tv_nsec = rel_ns % 1000000000LL;
	if (interval_ns > 0) {
		its.it_interval.tv_sec = interval_ns / 1000000000LL;
		its.it_interval.tv_nsec = interval_ns % 1000000000LL;
	}
	timerfd_settime(p->timer_fd, 0, &its, NULL);
}

static void timer_disarm(snd_pcm_paced_t *p)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	timerfd_settime(p->timer_fd, 0, &its, NULL);
}

/* (re)arm the poll timer for the current state.  `appl` = absolute appl pos. */
static void update_timer(snd_pcm_paced_t *p, int64_t now, int64_t appl, snd_pcm_state_t state)
{
	int64_t hw_avail, avail;

	if (p->timer_fd < 0)
		return;
	if (p->xrun || !p->buffer_size) {
		timer_arm(p, 0, 0);
		return;
	}
	hw_avail = appl - (int64_t)p->pos;
	avail = (int64_t)p->buffer_size - hw_avail;
	if (p->running) {
		uint64_t next = (p->pos / p->period_size + 1) * p->period_size;
		int64_t t_next = p->t0 + time_of(p, next - p->base);
		if (state == SND_PCM_STATE_DRAINING) {
			int64_t t_end = p->t0 + time_of(p, appl > (int64_t)p->base ? (uint64_t)appl - p->base : 0);
			if (t_end < t_next)
				t_next = t_end;
			timer_arm(p, t_next - now, period_ns(p));
		} else if (avail >= (int64_t)p->avail_min) {
			timer_arm(p, 0, period_ns(p));
		} else {
			timer_arm(p, t_next - now, period_ns(p));
		}
		return;
	}
	switch (state) {
	case SND_PCM_STATE_PREPARED:
	case SND_PCM_STATE_PAUSED:
		if (avail >= (int64_t)p->avail_min)
			timer_arm(p, 0, 0);
		else
			timer_disarm(p);
		break;
	default:
		/* SETUP, XRUN, ...: poll reports an error at once */
		timer_arm(p, 0, 0);
		break;
	}
}

/* ------------------------------------------------------------------ */
/* FAIL=path: a device that disappears and returns                      */

static int gone(const snd_pcm_paced_t *p)
{
	return p->fail_path && access(p->fail_path, F_OK) == 0;
}

/* The device vanished: what played until now is logged, then it stops. */
static void go_away(snd_pcm_paced_t *p)
{
	if (p->running) {
		int64_t now = now_raw();
		advance(p, now, appl_abs(p));
		if (p->running)
			log_stop(p, now, p->pos, STOP_DROP);
		p->running = 0;
	}
	log_flush(p);
	if (p->timer_fd >= 0)
		timer_arm(p, 0, 0); /* poll wakes the app, which then sees the error */
}

/* ------------------------------------------------------------------ */
/* ioplug callbacks                                                    */

static int paced_start(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;
	int64_t now = now_raw();
	int64_t appl = appl_abs(p);

	if (gone(p)) {
		go_away(p);
		return -ENODEV;
	}
	p->xrun = 0;
	p->running = 1;
	p->t0 = now;
	p->base = p->pos;
	log_epoch(p);
	update_timer(p, now, appl, SND_PCM_STATE_RUNNING);
	return 0;
}

static int paced_stop(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;
	int64_t now = now_raw();

	if (p->running) {
		int64_t appl = appl_abs(p);
		advance(p, now, appl);
		if (p->running) {
			if (io->state == SND_PCM_STATE_DRAINING && (int64_t)p->pos >= appl)
				log_stop(p, p->t0 + time_of(p, p->pos - p->base), p->pos, STOP_DRAIN);
			else
				log_stop(p, now, p->pos, STOP_DROP);
		}
	}
	p->running = 0;
	log_flush(p);
	/* drop: poll reports an error until the next prepare */
	if (p->timer_fd >= 0)
		timer_arm(p, 0, 0);
	return 0;
}

static snd_pcm_sframes_t paced_pointer(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;

	if (gone(p)) {
		go_away(p);
		return -ENODEV;
	}
	if (p->xrun)
		return -EPIPE;
	if (p->running) {
		int64_t now = now_raw();
		advance(p, now, appl_abs(p));
		if (p->xrun) {
			if (p->timer_fd >= 0)
				timer_arm(p, 0, 0);
			return -EPIPE;
		}
	}
	return (snd_pcm_sframes_t)(p->pos % (p->boundary ? p->boundary : (snd_pcm_uframes_t)LONG_MAX));
}

static snd_pcm_sframes_t paced_transfer(snd_pcm_ioplug_t *io,
					const snd_pcm_channel_area_t *areas,
					snd_pcm_uframes_t offset,
					snd_pcm_uframes_t size)
{
	snd_pcm_paced_t *p = io->private_data;
	snd_pcm_uframes_t slot, done = 0;
	int64_t appl;

	if (!p->ring)
		return -EBADFD;
	if (gone(p)) {
		go_away(p);
		return -EIO;
	}
	appl = appl_abs(p);
	slot = (snd_pcm_uframes_t)((uint64_t)appl % p->buffer_size);
	while (done < size) {
		snd_pcm_uframes_t chunk = p->buffer_size - slot;
		if (chunk > size - done)
			chunk = size - done;
		snd_pcm_areas_copy(p->ring_areas, slot, areas, offset + done,
				   p->channels, chunk, p->format);
		done += chunk;
		slot = (slot + chunk) % p->buffer_size;
	}
	update_timer(p, now_raw(), appl + (int64_t)size, io->state);
	return (snd_pcm_sframes_t)size;
}

static int paced_prepare(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;
	int64_t now = now_raw();

	if (gone(p)) {
		go_away(p);
		return -ENODEV;
	}
	if (p->running) {
		/* ioplug has already reset appl_ptr; use the last known value */
		advance(p, now, p->appl_cache);
		if (p->running)
			log_stop(p, now, p->pos, STOP_PREPARE);
	}
	p->running = 0;
	p->xrun = 0;
	p->pos = 0;
	p->appl_cache = 0;
	p->t0 = now;
	p->base = 0;
	if (p->ring)
		memset(p->ring, 0, (size_t)p->buffer_size * p->bpf);
	log_prepare(p, now);
	update_timer(p, now, 0, SND_PCM_STATE_PREPARED);
	return 0;
}

static int paced_pause(snd_pcm_ioplug_t *io, int enable)
{
	snd_pcm_paced_t *p = io->private_data;
	int64_t now = now_raw();
	int64_t appl = appl_abs(p);

	if (enable) {
		advance(p, now, appl);
		if (p->running)
			log_stop(p, now, p->pos, STOP_PAUSE);
		p->running = 0;
		update_timer(p, now, appl, SND_PCM_STATE_PAUSED);
	} else if (!p->xrun) {
		p->running = 1;
		p->t0 = now;
		p->base = p->pos;
		log_epoch(p);
		update_timer(p, now, appl, SND_PCM_STATE_RUNNING);
	}
	return 0;
}

static int paced_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfds,
			      unsigned int nfds, unsigned short *revents)
{
	snd_pcm_paced_t *p = io->private_data;
	uint64_t expirations;
	snd_pcm_sframes_t avail;
	snd_pcm_state_t state;
	unsigned short r = 0;
	unsigned int i;

	for (i = 0; i < nfds; i++)
		if (pfds[i].fd == p->timer_fd && (pfds[i].revents & POLLNVAL))
			r |= POLLNVAL;

	/* consume the tick(s) */
	if (read(p->timer_fd, &expirations, sizeof(expirations)) < 0) {
		/* EAGAIN: nothing pending, fine */
	}
	/* the pcm lock is released by ioplug around this callback */
	avail = snd_pcm_avail_update(io->pcm);
	state = io->state;
	switch (state) {
	case SND_PCM_STATE_RUNNING:
	case SND_PCM_STATE_PREPARED:
	case SND_PCM_STATE_PAUSED:
		if (avail >= 0 && (snd_pcm_uframes_t)avail >= p->avail_min)
			r |= POLLOUT;
		if (avail < 0)
			r |= POLLERR;
		break;
	case SND_PCM_STATE_DRAINING:
		/* not ready until drained (like the kernel for playback) */
		break;
	default:
		/* XRUN, SETUP, ...: like the kernel, writable + error */
		r |= POLLOUT | POLLERR;
		break;
	}
	update_timer(p, now_raw(), appl_abs(p), state);
	*revents = r;
	return 0;
}

static int paced_hw_params(snd_pcm_ioplug_t *io, snd_pcm_hw_params_t *params)
{
	snd_pcm_paced_t *p = io->private_data;
	unsigned int c, sbits;
	(void)params;

	p->format = io->format;
	p->channels = io->channels;
	p->rate = io->rate;
	p->period_size = io->period_size;
	p->buffer_size = io->buffer_size;
	sbits = (unsigned int)snd_pcm_format_physical_width(p->format);
	p->bpf = sbits / 8 * p->channels;
	p->F = (uint64_t)p->rate * (uint64_t)((int64_t)E12 + p->ppm_u);
	/* same rule as alsa-lib; sw_params tells us the real one later */
	p->boundary = p->buffer_size;
	while (p->boundary * 2 <= LONG_MAX - p->buffer_size)
		p->boundary *= 2;
	p->avail_min = p->period_size;
	p->stop_threshold = p->buffer_size;

	free(p->ring);
	p->ring = calloc(p->buffer_size, p->bpf);
	if (!p->ring)
		return -ENOMEM;
	for (c = 0; c < p->channels; c++) {
		p->ring_areas[c].addr = p->ring;
		p->ring_areas[c].first = c * sbits;
		p->ring_areas[c].step = p->bpf * 8;
	}
	/* logbuf: >= 1 MiB and >= 0.5 s of audio */
	if (p->log_fd >= 0) {
		size_t want = (size_t)p->rate / 2 * p->bpf + 4096;
		if (want < (1u << 20))
			want = 1u << 20;
		log_flush(p);
		if (want > p->logcap) {
			uint8_t *nb = realloc(p->logbuf, want);
			if (nb) {
				p->logbuf = nb;
				p->logcap = want;
			}
		}
		log_format(p);
	}
	p->pos = 0;
	p->running = 0;
	p->xrun = 0;
	return 0;
}

static int paced_hw_free(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;
	log_flush(p);
	return 0;
}

static int paced_sw_params(snd_pcm_ioplug_t *io, snd_pcm_sw_params_t *params)
{
	snd_pcm_paced_t *p = io->private_data;
	snd_pcm_uframes_t v;

	if (snd_pcm_sw_params_get_avail_min(params, &v) >= 0)
		p->avail_min = v ? v : 1;
	if (snd_pcm_sw_params_get_stop_threshold(params, &v) >= 0)
		p->stop_threshold = v;
	if (snd_pcm_sw_params_get_boundary(params, &v) >= 0 && v)
		p->boundary = v;
	return 0;
}

static int paced_close(snd_pcm_ioplug_t *io)
{
	snd_pcm_paced_t *p = io->private_data;

	if (p->running) {
		int64_t now = now_raw();
		advance(p, now, appl_abs(p));
		if (p->running)
			log_stop(p, now, p->pos, STOP_CLOSE);
		p->running = 0;
	}
	log_flush(p);
	if (p->log_fd >= 0)
		close(p->log_fd);
	if (p->timer_fd >= 0)
		close(p->timer_fd);
	free(p->logbuf);
	free(p->ring);
	free(p->log_path);
	free(p->fail_path);
	free(p);
	return 0;
}

static void paced_dump(snd_pcm_ioplug_t *io, snd_output_t *out)
{
	snd_pcm_paced_t *p = io->private_data;
	snd_output_printf(out, "Software-paced PCM (ppm=%g, latency=%" PRId64 " ns, log=%s)\n",
			  p->ppm, p->latency_ns, p->log_path ? p->log_path : "(none)");
	if (io->pcm) {
		snd_output_printf(out, "Its setup is:\n");
		snd_pcm_dump_setup(io->pcm, out);
	}
}

static const snd_pcm_ioplug_callback_t paced_callback = {
	.start = paced_start,
	.stop = paced_stop,
	.pointer = paced_pointer,
	.transfer = paced_transfer,
	.close = paced_close,
	.hw_params = paced_hw_params,
	.hw_free = paced_hw_free,
	.sw_params = paced_sw_params,
	.prepare = paced_prepare,
	.pause = paced_pause,
	.poll_revents = paced_poll_revents,
	.dump = paced_dump,
};

/* ------------------------------------------------------------------ */
/* construction                                                        */

static int paced_set_constraints(snd_pcm_paced_t *p)
{
	static const unsigned int access_list[] = {
		SND_PCM_ACCESS_RW_INTERLEAVED,
		SND_PCM_ACCESS_MMAP_INTERLEAVED,
	};
	static const unsigned int format_list[] = {
		SND_PCM_FORMAT_S16_LE,
		SND_PCM_FORMAT_S32_LE,
		SND_PCM_FORMAT_S24_3LE,
	};
	int err;

	if ((err = snd_pcm_ioplug_set_param_list(&p->io, SND_PCM_IOPLUG_HW_ACCESS,
						 2, access_list)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&p->io, SND_PCM_IOPLUG_HW_FORMAT,
						 3, format_list)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&p->io, SND_PCM_IOPLUG_HW_CHANNELS,
						   1, 8)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&p->io, SND_PCM_IOPLUG_HW_RATE,
						   8000, 192000)) < 0 ||
	    /* ioplug constrains bytes, not frames: 32 frames of S16 mono ..
	     * 65536 frames of 8ch S32 */
	    (err = snd_pcm_ioplug_set_param_minmax(&p->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES,
						   64, 65536 * 32)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&p->io, SND_PCM_IOPLUG_HW_PERIODS,
						   2, 64)) < 0 ||
	    /* ~2 s of 192 kHz 8ch S32 */
	    (err = snd_pcm_ioplug_set_param_minmax(&p->io, SND_PCM_IOPLUG_HW_BUFFER_BYTES,
						   128, 2 * 192000 * 32)) < 0)
		return err;
	return 0;
}

static int get_number(snd_config_t *n, const char *id, double *out)
{
	const char *s;
	long l;
	long long ll;
	double d;
	char *end;

	switch (snd_config_get_type(n)) {
	case SND_CONFIG_TYPE_INTEGER:
		snd_config_get_integer(n, &l);
		*out = (double)l;
		return 0;
	case SND_CONFIG_TYPE_INTEGER64:
		snd_config_get_integer64(n, &ll);
		*out = (double)ll;
		return 0;
	case SND_CONFIG_TYPE_REAL:
		snd_config_get_real(n, &d);
		*out = d;
		return 0;
	case SND_CONFIG_TYPE_STRING:
		snd_config_get_string(n, &s);
		if (!s || !*s) {
			*out = 0;
			return 0;
		}
		errno = 0;
		d = strtod(s, &end);
		if (errno || *end) {
			SNDERR("paced: %s: not a number: '%s'", id, s);
			return -EINVAL;
		}
		*out = d;
		return 0;
	default:
		SNDERR("paced: %s must be a number", id);
		return -EINVAL;
	}
}

SND_PCM_PLUGIN_DEFINE_FUNC(paced)
{
	snd_config_iterator_t i, next;
	snd_pcm_paced_t *p;
	double ppm = 0, latency_us = 0;
	const char *log_path = NULL;
	const char *fail_path = NULL;
	int err;

	(void)root;
	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "ppm")) {
			if ((err = get_number(n, id, &ppm)) < 0)
				return err;
			continue;
		}
		if (!strcmp(id, "latency_us")) {
			if ((err = get_number(n, id, &latency_us)) < 0)
				return err;
			continue;
		}
		if (!strcmp(id, "log")) {
			if (snd_config_get_string(n, &log_path) < 0) {
				SNDERR("paced: log must be a string");
				return -EINVAL;
			}
			continue;
		}
		if (!strcmp(id, "fail")) {
			if (snd_config_get_string(n, &fail_path) < 0) {
				SNDERR("paced: fail must be a string");
				return -EINVAL;
			}
			continue;
		}
		SNDERR("paced: unknown field %s", id);
		return -EINVAL;
	}
	if (stream != SND_PCM_STREAM_PLAYBACK) {
		SNDERR("paced: playback only");
		return -EINVAL;
	}
	if (!(ppm >= -1000.0 && ppm <= 1000.0)) {
		SNDERR("paced: ppm must be within -1000..1000");
		return -EINVAL;
	}
	if (!(latency_us >= 0 && latency_us <= 10e6)) {
		SNDERR("paced: latency_us must be within 0..10000000");
		return -EINVAL;
	}

	/* FAIL=path names a flag file: while it exists the device is absent (open fails
	 * with -ENODEV; an open device fails its pointer/prepare/start with -ENODEV and
	 * its transfer with -EIO), as a USB DAC that was unplugged. */
	if (fail_path && *fail_path && access(fail_path, F_OK) == 0)
		return -ENODEV;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->ppm = ppm;
	p->ppm_u = llround(ppm * 1e6);
	p->latency_ns = llround(latency_us * 1000.0);
	p->log_fd = -1;
	p->timer_fd = -1;
	p->last_frames_off = SIZE_MAX;
	if (fail_path && *fail_path) {
		p->fail_path = strdup(fail_path);
		if (!p->fail_path) {
			err = -ENOMEM;
			goto fail;
		}
	}

	if (log_path && *log_path) {
		/* append: an application that closes and re-opens the device keeps
		 * one history (each open starts with a FORMAT record) */
		off_t size;
		p->log_path = strdup(log_path);
		p->log_fd = open(log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (p->log_fd < 0) {
			err = -errno;
			SNDERR("paced: cannot open log %s: %s", log_path, strerror(errno));
			goto fail;
		}
		size = lseek(p->log_fd, 0, SEEK_END);
		if (size > 0) {
			char magic[8];
			if (pread(p->log_fd, magic, 8, 0) != 8 || memcmp(magic, PACED_LOG_MAGIC, 8)) {
				SNDERR("paced: %s exists and is not a paced log; refusing to append", log_path);
				err = -EINVAL;
				goto fail;
			}
		}
		p->logcap = 1u << 20;
		p->logbuf = malloc(p->logcap);
		if (!p->logbuf) {
			err = -ENOMEM;
			goto fail;
		}
		if (size <= 0) {
			uint8_t hdr[16];
			memcpy(hdr, PACED_LOG_MAGIC, 8);
			put_u32(hdr + 8, PACED_LOG_VERSION);
			put_u32(hdr + 12, 0);
			log_write_all(p, hdr, sizeof(hdr));
		}
	}

	p->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (p->timer_fd < 0) {
		err = -errno;
		SNDERR("paced: timerfd_create: %s", strerror(errno));
		goto fail;
	}

	p->io.version = SND_PCM_IOPLUG_VERSION;
	p->io.name = "Software-paced PCM (resonate_embedded)";
	p->io.callback = &paced_callback;
	p->io.private_data = p;
	p->io.poll_fd = p->timer_fd;
	p->io.poll_events = POLLIN;
	p->io.mmap_rw = 0;
	p->io.flags = SND_PCM_IOPLUG_FLAG_BOUNDARY_WA | SND_PCM_IOPLUG_FLAG_MONOTONIC;

	err = snd_pcm_ioplug_create(&p->io, name, stream, mode);
	if (err < 0)
		goto fail;
	/* ioplug only learns about non-blocking mode from snd_pcm_nonblock();
	 * honour the open mode too, so drain() on a non-blocking handle returns
	 * -EAGAIN like the kernel does instead of blocking. */
	p->io.nonblock = !!(mode & SND_PCM_NONBLOCK);
	err = paced_set_constraints(p);
	if (err < 0) {
		snd_pcm_ioplug_delete(&p->io); /* calls paced_close */
		return err;
	}
	*pcmp = p->io.pcm;
	return 0;

fail:
	if (p->timer_fd >= 0)
		close(p->timer_fd);
	if (p->log_fd >= 0)
		close(p->log_fd);
	free(p->logbuf);
	free(p->log_path);
	free(p->fail_path);
	free(p);
	return err;
}

SND_PCM_PLUGIN_SYMBOL(paced);
