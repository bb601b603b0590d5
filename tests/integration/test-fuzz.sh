#!/usr/bin/env bash
# A bounded, seeded fuzz (fuzz.py): connections send random unaligned reads, writes, zeroes,
# trims and flushes, sharing blocks but not bytes, checked against a shadow and the image file;
# ext4 and xfs on a 4K-sector loop device, every engine. LOOPDIO_FUZZ_SEED replays a run's
# requests; LOOPDIO_FUZZ_OPS fixes their number, LOOPDIO_FUZZ_SECONDS the time per run.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo mkfs.xfs losetup

seed=${LOOPDIO_FUZZ_SEED:-$RANDOM}
ops=${LOOPDIO_FUZZ_OPS:-0}  # requests per connection; 0: as many as fit in the time
set -- $ENGINES
seconds=${LOOPDIO_FUZZ_SECONDS:-$((100 / (2 * $#)))}
echo "seed $seed, ${seconds}s per run"
size=$((24 << 20 | 1234))  # the last block is partial
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  for engine in $ENGINES; do
    # A run's own seed does not depend on which others run, so LOOPDIO_ENGINES=x replays it.
    run_seed=$((seed * 100 + $([ $fs = ext4 ] && echo 10 || echo 20) + ${#engine}))
    img=$mnt/fuzz-$engine.img
    $PYTHON -m fuzz init "$img" $size $run_seed
    start_server -- file="$img" aio=$engine
    assert_engine "$URI" "$engine"
    echo "$fs/$engine: $(nbdinfo "$URI" | grep description: | sed 's/.*description: //')"
    replay="replay: LOOPDIO_FUZZ_SEED=$seed LOOPDIO_ENGINES=$engine $0"
    $PYTHON -m fuzz run "$URI" "$img" $run_seed "$seconds" "$ops" "$T/shadow" || fail "$fs/$engine: $replay"
    stop_server
    $PYTHON -m fuzz compare "$img" "$T/shadow" || fail "$fs/$engine: image file: $replay"
    grep -i "error" "$SERVER_LOG" && fail "$fs/$engine: the server logged errors"
    pass "$fs/$engine"
  done
done
