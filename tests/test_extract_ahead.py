"""Issue 14 target 1: one read-ahead budget for all the packages in flight.

- ``compression.AheadBudget`` bounds the decompressed bytes held ahead of every reader
  together, however large a package ahead is; the stream being read always flows (never
  starved by those ahead of it); a stream whose reader waits decodes first, then the lowest
  rank; a closed stream gives its bytes back.
- ``extract._OpenOrder`` opens a large package long before its turn, yet the packages are
  written in the recipe's order: the later package wins on a shared path, and the first broken
  package in order is the one named.
"""

from __future__ import annotations

import io
import lzma
import random
import time

from test_extract_parallel import _build, _corrupt, _deb, _settle

from pipeline.formats.compression import (
    AHEAD_PIECE,
    CHUNK,
    AheadBudget,
    _Pipe,
    open_decompressed,
    read_ahead,
    read_upto,
)
from pipeline.stages import extract

BIG = random.Random(1).randbytes(CHUNK) * 24  # 24 MiB, compresses well and fast
BIG_XZ = lzma.compress(BIG, preset=0)
SMALL = random.Random(2).randbytes(3 * CHUNK)
SMALL_XZ = lzma.compress(SMALL, preset=0)


def _open(budget: AheadBudget, data: bytes, rank: float):
    with read_ahead(budget), budget.opening(rank):
        return open_decompressed(io.BytesIO(data), "xz", "p.deb:data.tar.xz", ahead=True)


def _read_all(reader) -> bytes:
    got = bytearray()
    while chunk := reader.read(CHUNK):
        got += chunk
    return bytes(got)


def _quiet(budget: AheadBudget, *readers, timeout: float = 60.0) -> None:
    """Until every reader's thread is blocked waiting for room in the budget (queued, no piece
    decoding: nothing changes until a reader takes or closes) or has ended.

    Not "the held bytes stopped changing for 0.1 s": a thread the loaded machine had not yet
    run looked exactly like that, with nothing held."""
    end = time.monotonic() + timeout
    while True:
        with budget.lock:
            if budget.running == 0 and all(
                    any(r._inner._pipe is q for q in budget._queued)
                    or not r._inner._thread.is_alive() for r in readers):
                return
        assert time.monotonic() < end, "the read-ahead threads never came to rest"
        time.sleep(0.02)


def test_a_large_stream_ahead_stays_within_the_budget_and_the_current_one_flows():
    total = 4 * CHUNK
    budget = AheadBudget(total, workers=2)
    big = _open(budget, BIG_XZ, rank=-1)  # the most urgent: it would take everything
    _quiet(budget, big)
    assert total - AHEAD_PIECE <= budget.held <= total  # it ran ahead, then stopped
    small = _open(budget, SMALL_XZ, rank=5)
    assert _read_all(small) == SMALL  # not starved although the budget is full
    assert _read_all(big) == BIG
    # never more than the budget plus one piece per stream, although 27 MiB went through
    assert budget.peak <= total + 2 * AHEAD_PIECE
    small.close()
    big.close()
    assert budget.held == 0 and budget.running == 0
    assert not _settle()


def test_one_stream_holds_at_most_the_cap():
    budget = AheadBudget(16 * CHUNK, cap=2 * CHUNK, workers=2)
    big = _open(budget, BIG_XZ, rank=0)
    _quiet(budget, big)
    assert 0 < budget.held <= 2 * CHUNK
    assert _read_all(big) == BIG
    big.close()
    assert not _settle()


def test_closing_streams_midway_gives_their_bytes_back():
    budget = AheadBudget(8 * CHUNK, workers=2)
    readers = [_open(budget, data, rank) for rank, data in enumerate((BIG_XZ, SMALL_XZ, BIG_XZ))]
    assert read_upto(readers[1], 1000) == SMALL[:1000]
    _quiet(budget, *readers)
    assert budget.held > 0
    for reader in readers:
        reader.close()
    assert budget.held == 0 and budget.running == 0
    assert not _settle()


def test_many_streams_read_in_turn_see_their_own_bytes():
    """Eight streams in flight, read one after another as the extract stage does."""
    budget = AheadBudget(6 * CHUNK, cap=3 * CHUNK, workers=2)
    datas = [random.Random(i).randbytes(CHUNK // 2) * (1 + i % 5) for i in range(8)]
    readers = [_open(budget, lzma.compress(d, preset=0), rank=-i) for i, d in enumerate(datas)]
    for reader, data in zip(readers, datas):
        assert _read_all(reader) == data
        reader.close()
    assert budget.held == 0 and budget.peak <= 6 * CHUNK + 8 * AHEAD_PIECE
    assert not _settle()


def _pipes(budget: AheadBudget, ranks: list[float]) -> list[_Pipe]:
    pipes = []
    for rank in ranks:
        with budget.opening(rank):
            pipes.append(_Pipe(budget))
    return pipes


def test_turns_go_to_the_waited_for_stream_then_the_lowest_rank():
    budget = AheadBudget(8 * CHUNK, workers=2)
    low, high, waited = _pipes(budget, [1.0, 9.0, 20.0])
    with budget.lock:
        budget._queued[:] = [high, low]
        budget._dispatch()  # no reader waits: one core is the writer's, one piece decodes
        assert (low.granted, high.granted) == (True, False)
    with budget.lock:
        budget._deliver(low, b"x" * AHEAD_PIECE, AHEAD_PIECE)  # its piece is done
        budget._dispatch()
        assert (low.items[0], high.granted) == (b"x" * AHEAD_PIECE, True)  # the next turn
        budget._deliver(high, b"y", 1)
        budget._queued[:] = [high, waited, low]
        high.granted = False
        low.granted = False
        waited.waited_on, budget.readers_waiting = True, 1
        budget._dispatch()  # a reader waits: both cores decode, its stream first
        assert (waited.granted, low.granted, high.granted) == (True, True, False)
        assert budget.running == 2


def test_a_stream_with_nothing_held_decodes_even_when_the_budget_is_full():
    budget = AheadBudget(2 * AHEAD_PIECE, workers=1)
    hog, starved = _pipes(budget, [0.0, 1.0])
    with budget.lock:
        budget._add(hog, 2 * AHEAD_PIECE)  # the whole budget, held ahead
        budget._queued[:] = [hog, starved]
        budget._dispatch()
        assert (hog.granted, starved.granted) == (False, True)
        assert budget.held == 3 * AHEAD_PIECE  # the one piece beyond the budget


def test_a_large_package_is_opened_first_and_the_window_is_bounded():
    sizes = [100] * 5 + [100_000] + [100] * 60
    order = extract._OpenOrder(sizes)
    first = order.next_to_open(0, {})
    assert first[:2] == [0, 5]  # the current one, then the large one before the small ones
    assert len(first) == 1 + extract.PACKAGES_AHEAD
    assert all(0 < p < extract.LOOKAHEAD for p in first[1:])
    opened = dict.fromkeys(first[1:])
    for position in range(1, 40):  # as extract() goes: one more opened as one is written
        more = order.next_to_open(position, opened)
        unopened = [p for p in range(position + 1, len(sizes)) if p not in opened]
        assert more == unopened[:1]  # equal sizes: in the recipe's order
        opened.update(dict.fromkeys(more))
        del opened[position]
        assert len(opened) == extract.PACKAGES_AHEAD


def test_a_package_opened_early_is_still_written_in_the_recipes_order(tmp_path, cache_dir):
    from pkgfactory import build_deb, file

    rng = random.Random(9)
    small = [_deb(tmp_path, f"s{i}", rng.randbytes(4096)) for i in range(3)]
    small[0] = build_deb(tmp_path, "s0", "1.0", [file("/usr/share/s0/data", b"s0"),
                                                 file("/usr/share/common", b"from s0")])
    big = build_deb(tmp_path, "zbig", "1.0", [  # incompressible: opened first, written last
        file("/usr/share/zbig/data", rng.randbytes(3 * CHUNK)),
        file("/usr/share/common", b"from zbig")])
    assert extract._OpenOrder([d.stat().st_size for d in [*small, big]]).next_to_open(0, {}) \
        == [0, 3, 1, 2]
    proc = _build(tmp_path / "ok", cache_dir, [*small, big])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ok" / "out" / "two" / "usr" / "share"
    assert sorted(p.name for p in out.iterdir()) == ["common", "s0", "s1", "s2", "zbig"]
    assert (out / "common").read_bytes() == b"from zbig"  # the later package in order wins
    assert (out / "zbig" / "data").stat().st_size == 3 * CHUNK

    # both broken: the large one fails first in time, the small one first in order
    broken = [_corrupt(d, tmp_path / f"{d.stem}-broken.deb") for d in (small[1], big)]
    proc = _build(tmp_path / "bad", cache_dir, [small[0], broken[0], small[2], broken[1]])
    assert proc.returncode == 2
    assert "s1" in proc.stderr and "zbig" not in proc.stderr, proc.stderr
    assert not (tmp_path / "bad" / "out" / "two").exists()
    assert not _settle()


def test_no_thread_is_left_behind_by_an_abandoned_budget():
    budget = AheadBudget(2 * CHUNK, workers=2)
    readers = [_open(budget, BIG_XZ, rank=i) for i in range(3)]
    del readers  # collected: their close stops the threads
    assert not _settle()
