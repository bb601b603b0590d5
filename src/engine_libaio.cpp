// The libaio engine: one kernel AIO context per export, shared by its connections' worker
// threads.
//
// How a completion reaches its thread: every iocb names its submitter's own eventfd
// (IOCB_FLAG_RESFD), so the kernel wakes exactly the thread whose I/O finished, and no
// other. That thread then consumes whatever completions are in the context's ring, straight
// from the user-mapped ring (no io_getevents call), stores each result in its owner's op and
// counts it off. A thread whose result was taken by another still finds its eventfd
// signalled, so it never sleeps past its own completion. No thread ever sleeps in
// io_getevents, where the kernel would wake every waiter of the context at each completion.
#include <libaio.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "loopdio/engine.h"
#include "loopdio/error.h"
#include "loopdio/log.h"
#include "loopdio/unique_fd.h"

namespace loopdio {
namespace {

// The header the kernel maps at the address io_setup returns. No uapi header declares it:
// the layout is copied from `struct aio_ring`, AIO_RING_MAGIC and AIO_RING_INCOMPAT_FEATURES
// in the kernel's fs/aio.c, which aio_setup_ring() fills in; read in the Linux 4.11-5.7
// source, and unchanged in 6.x (aio_setup_ring, converted to folios, fills the same fields;
// Linux 6.18 maps exactly this header, nr = 127 for a depth of 8). `ring_is_ours` checks at
// run time that the mapped header is this layout before any completion is taken from it,
// so a kernel that changed it costs only the io_getevents fallback.
struct AioRing {
  unsigned id;
  unsigned nr;  // number of io_events in the ring
  unsigned head;
  unsigned tail;
  unsigned magic;
  unsigned compat_features;
  unsigned incompat_features;
  unsigned header_length;  // sizeof(struct aio_ring) of the kernel that made it
  struct io_event events[];
};
static_assert(sizeof(AioRing) == 32 && sizeof(struct io_event) == 32);
constexpr unsigned kAioRingMagic = 0xa10a10a1;
// The most events a ring can hold: io_setup refuses more than 0x10000000 bytes of events,
// and aio_setup_ring adds two and rounds up to whole pages.
constexpr unsigned kAioRingMaxEvents = 0x10000000 / sizeof(struct io_event) + 4096;

// True when the header at `ring` is the layout above, for a context of `depth` slots: the
// kernel sizes the ring to more than twice the depth (fs/aio.c, ioctx_alloc).
bool ring_is_ours(const AioRing* ring, unsigned depth) {
  return ring->magic == kAioRingMagic && ring->incompat_features == 0 &&
         ring->header_length == sizeof(AioRing) && ring->nr > depth &&
         ring->nr <= kAioRingMaxEvents && ring->head < ring->nr && ring->tail < ring->nr;
}

struct Waiter {
  std::atomic<std::size_t> pending;
};

// One iocb and whom its completion belongs to. The owner fills it before io_submit and any
// thread may complete it; the handoff runs through the kernel, which a race detector cannot
// see, so the owner publishes with release stores that the completing thread acquires.
struct Slot {
  struct iocb cb;
  std::atomic<IoOp*> op;
  std::atomic<Waiter*> waiter;
};

// This thread's eventfd, created at its first request and closed when the thread exits;
// or -errno when it cannot be had now (EMFILE: tried again at the next request).
int thread_eventfd() {
  thread_local UniqueFd efd;
  if (!efd) efd.reset(::eventfd(0, EFD_CLOEXEC));
  return efd ? efd.get() : -errno;
}

// This thread's iocbs; reused from request to request, only ever grown while none is in
// flight.
struct ThreadSlots {
  std::unique_ptr<Slot[]> slots;
  std::vector<struct iocb*> ptrs;
};
ThreadSlots& thread_slots(std::size_t n) {
  thread_local ThreadSlots t;
  if (t.ptrs.size() < n) {
    t.slots = std::make_unique<Slot[]>(n);
    t.ptrs.resize(n);
  }
  return t;
}

class LibaioEngine final : public Engine {
 public:
  explicit LibaioEngine(unsigned depth) {
    int r = io_setup(static_cast<int>(depth), &ctx_);
    if (r < 0) throw sys_error("io_setup(" + std::to_string(depth) + ")", -r);
    const auto* ring = reinterpret_cast<const AioRing*>(ctx_);
    user_reap_ = ring_is_ours(ring, depth);
    if (user_reap_)
      ring_nr_ = ring->nr;
    else
      notice("libaio: the kernel's completion ring is not the known layout: using io_getevents");
  }
  ~LibaioEngine() override { io_destroy(ctx_); }

  const char* name() const noexcept override { return "libaio"; }

  void run(std::span<IoOp> ops) noexcept override {
    if (ops.empty()) return;
    int efd = thread_eventfd();
    if (efd < 0) {
      for (IoOp& op : ops) op.result = efd;
      return;
    }
    ThreadSlots* t;
    try {
      t = &thread_slots(ops.size());
    } catch (const std::bad_alloc&) {
      for (IoOp& op : ops) op.result = -ENOMEM;
      return;
    }
    Waiter w{ops.size()};
    for (std::size_t i = 0; i < ops.size(); ++i) prepare(t->slots[i], ops[i], w, efd, t->ptrs[i]);
    submit(t->ptrs.data(), ops.size(), w, efd);
    while (w.pending.load(std::memory_order_acquire) > 0) {
      reap();
      if (w.pending.load(std::memory_order_acquire) == 0) break;
      wait_eventfd(efd);
    }
  }

 private:
  static void prepare(Slot& s, IoOp& op, Waiter& w, int efd, struct iocb*& ptr) {
    if (op.kind == IoKind::kRead)
      io_prep_pread(&s.cb, op.fd, op.buf, op.len, static_cast<long long>(op.off));
    else
      io_prep_pwrite(&s.cb, op.fd, op.buf, op.len, static_cast<long long>(op.off));
    s.cb.aio_rw_flags = op.dsync ? RWF_DSYNC : 0;
    io_set_eventfd(&s.cb, efd);
    s.cb.data = &s;
    s.op.store(&op, std::memory_order_release);
    s.waiter.store(&w, std::memory_order_release);
    ptr = &s.cb;
  }

  void submit(struct iocb** ptrs, std::size_t n, Waiter& w, int efd) {
    std::size_t done = 0;
    while (done < n) {
      int r = io_submit(ctx_, static_cast<long>(n - done), ptrs + done);
      if (r > 0) {
        done += static_cast<std::size_t>(r);
      } else if (r == -EAGAIN || r == 0) {
        // Every slot of the context is in flight. Let one of ours finish, or anyone's.
        reap();
        if (w.pending.load(std::memory_order_acquire) > n - done)
          wait_eventfd(efd);
        else
          pause();
      } else if (r != -EINTR) {
        // The kernel refused the first remaining iocb (EINVAL, EBADF, ...): it has failed.
        auto* s = static_cast<Slot*>(ptrs[done]->data);
        s->op.load(std::memory_order_relaxed)->result = r;
        w.pending.fetch_sub(1, std::memory_order_release);
        ++done;
      }
    }
  }

  // Consumes every completion in the ring and hands each to its owner.
  void reap() {
    std::lock_guard lock(reap_mu_);
    if (user_reap_) {
      auto* ring = reinterpret_cast<AioRing*>(ctx_);
      unsigned head = ring->head;
      unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
      if (head == tail) return;
      if (head < ring_nr_ && tail < ring_nr_) {
        for (; head != tail; head = (head + 1) % ring_nr_) complete(ring->events[head]);
        __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
        return;
      }
      // An index outside the ring: the header is not what it was checked to be.
      user_reap_ = false;
      try {
        notice("libaio: the completion ring's indexes are out of range: using io_getevents");
      } catch (...) {
      }
    }
    struct io_event events[64];
    struct timespec zero = {0, 0};
    int n;
    do {
      n = io_getevents(ctx_, 0, 64, events, &zero);
      for (int i = 0; i < n; ++i) complete(events[i]);
    } while (n == 64);
  }

  static void complete(const struct io_event& ev) {
    auto* s = static_cast<Slot*>(ev.data);
    Waiter* w = s->waiter.load(std::memory_order_acquire);
    s->op.load(std::memory_order_acquire)->result = static_cast<long>(ev.res);
    // The last touch of the slot: once pending drops, its owner may reuse it.
    w->pending.fetch_sub(1, std::memory_order_release);
  }

  static void wait_eventfd(int efd) {
    std::uint64_t count;
    while (::read(efd, &count, sizeof count) < 0 && errno == EINTR) {
    }
  }

  static void pause() {
    struct timespec ts = {0, 50 * 1000};
    nanosleep(&ts, nullptr);
  }

  io_context_t ctx_ = nullptr;
  bool user_reap_ = false;  // completions taken from the mapped ring; under reap_mu_
  unsigned ring_nr_ = 0;    // the ring's size in events, read once when it was checked
  std::mutex reap_mu_;  // one consumer of the completion ring at a time (its head pointer)
};

}  // namespace

std::unique_ptr<Engine> make_libaio_engine(unsigned depth) {
  return std::make_unique<LibaioEngine>(depth);
}

}  // namespace loopdio
