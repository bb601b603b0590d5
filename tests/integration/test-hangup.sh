#!/usr/bin/env bash
# Clients that hang up with requests in flight: 20 clients in turn each queue 64 reads and
# writes (aligned and unaligned, up to 1 MiB) without waiting, and vanish once the server is
# at work on them: a reset, a half-close, an exit, or SIGKILL (hangup.py). Meanwhile another
# connection writes and verifies a pattern the whole time. The server must never die, the
# verifier must read back every byte it wrote, and once every client is gone the server's fds,
# AIO contexts and fs.aio-nr are where they started (nbdkit closes connections
# asynchronously: polled with a deadline). nbdkit before 1.34 aborted here
# ("raw_send_socket: Assertion 'sock >= 0' failed") when a client hung up with requests
# queued. libaio and io_uring, on ext4 and on xfs over a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup

seed=${LOOPDIO_HANGUP_SEED:-$RANDOM}
echo "seed $seed (LOOPDIO_HANGUP_SEED=$seed replays the same requests)"
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/hangup.img
  truncate -s 64M "$img"
  for engine in libaio io_uring; do
    what="$fs/$engine"
    start_server -- file="$img" aio=$engine
    fds0=$(server_fds) contexts0=$(aio_contexts) aio0=$(aio_nr)
    assert_engine "$URI" "$engine"
    echo "$what: before: fds $fds0, AIO contexts $contexts0, fs.aio-nr $aio0"
    $PYTHON "$TESTS_DIR/hangup.py" run "$URI" "$SERVER_PID" "$seed" 20 ||
      { cat "$SERVER_LOG"; fail "$what (seed $seed)"; }
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG"; fail "$what: the server died"; }
    expect_fds "$fds0" "$what"
    wait_until 10 eval '[ "$(aio_contexts)" -eq "$contexts0" ]' ||
      fail "$what: the server holds $(aio_contexts) AIO contexts, held $contexts0"
    expect_aio_nr "$aio0" "$what"
    echo "$what: after: fds $(server_fds), AIO contexts $(aio_contexts), fs.aio-nr $(aio_nr)"
    stop_server
    pass "$what: 20 clients vanished with requests in flight; server up, data right, nothing leaked"
  done
done
