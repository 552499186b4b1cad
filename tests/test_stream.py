"""Streamed data: shards read in order (workers, ranks, offsets), the replay feeder's ratio and exact resume, and
memory that stays bounded over a run many times the buffer's size."""

from __future__ import annotations

import gc
import resource

import pytest
import torch
from conftest import synthetic

from agents.collect import TransitionCollector, rrc_env_kwargs
from agents.data import ReplayBuffer, ReplayFeeder, ShardStream, transition_fields, write_shards
from view_env.vector import ViewTransformVectorEnv


def counting_stream(chunk=7):
    """``open(start)`` of the sequence 0, 1, 2, ... in chunks of ``chunk`` (the row id is the offset)."""

    def open_stream(start):
        position = start
        while True:
            yield synthetic(chunk, position)
            position += chunk

    return open_stream


def ids(batches):
    return torch.cat([b["image_index"] for b in batches]).tolist()


@pytest.fixture(params=["pt", "tar"])
def shards(tmp_path, request):
    """Both containers: torch files and WebDataset tar shards read through webdataset's tar iterator."""
    return write_shards(tmp_path / "shards", [synthetic(23)], None, shard_size=5,  # counts 5, 5, 5, 5, 3
                        shard_format=request.param)


# ----------------------------------------------------------------------------------------------- shards


def test_shards_stream_in_written_order_from_any_offset(shards):
    assert shards.counts == [5, 5, 5, 5, 3]
    assert {p.suffix for p in shards.shard_paths} in ({".pt"}, {".tar"})
    first = next(shards.stream(0, loop=False))
    for key, value in synthetic(23).items():  # every field, bit for bit
        assert torch.equal(first[key], value[:5]) and first[key].dtype == value.dtype, key
    stream = shards.stream(0, loop=False)
    assert ids(stream) == list(range(23))
    assert ids(shards.stream(12, loop=False)) == list(range(12, 23))
    looped = shards.stream(20)
    assert ids(next(looped) for _ in range(3)) == [20, 21, 22, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ids(next(shards.stream(23 * 2 + 6)) for _ in range(1)) == [6, 7, 8, 9]  # offsets count passes too


def test_shard_stream_order_does_not_depend_on_workers(shards):
    # One whole pass each (loop=False): run to its end, the loader shuts its workers down itself, rather than from
    # a half-read iterator's __del__ at garbage collection, which warned when a worker had already exited.
    alone = ids(shards.stream(3, loop=False))
    assert alone == ids(shards.stream(3, num_workers=2, loop=False)) and alone[:2] == [3, 4] and len(alone) == 20


def test_ranks_read_disjoint_shares_that_cover_every_shard(shards):
    first = ids(shards.stream(0, rank=0, world_size=2, loop=False))
    second = ids(shards.stream(0, rank=1, world_size=2, loop=False))
    assert first == [*range(0, 5), *range(10, 15), *range(20, 23)] and second == [*range(5, 10), *range(15, 20)]
    with pytest.raises(ValueError, match="too few for rank 5"):
        ShardStream(shards, rank=5, world_size=6)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ShardStream(shards, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start=-1"):
        ShardStream(shards, start=-1)


# ----------------------------------------------------------------------------------------------- the feeder


def test_feeder_fills_then_adds_batch_over_ratio_per_step():
    buffer = ReplayBuffer(20, 4, 3)
    feeder = ReplayFeeder(buffer, counting_stream(), batch_size=8, replay_ratio=4.0)
    feeder.advance(0)
    assert feeder.delivered == 20 and len(buffer) == 20
    assert sorted(buffer.storage["image_index"].tolist()) == list(range(20))
    for step in range(1, 30):
        feeder.advance(step)
        assert feeder.delivered == 20 + (step * 8) // 4  # two fresh transitions per step
    newest = feeder.delivered
    assert sorted(buffer.storage["image_index"].tolist()) == list(range(newest - 20, newest)), "the last C, no gaps"
    with pytest.raises(ValueError, match="replay_ratio=0"):
        ReplayFeeder(buffer, counting_stream(), 8, 0)
    with pytest.raises(ValueError, match="replay_ratio=-1"):
        ReplayFeeder(buffer, counting_stream(), 8, -1)


def test_each_transition_is_sampled_replay_ratio_times_on_average():
    capacity, batch, ratio = 64, 16, 3.0
    buffer = ReplayBuffer(capacity, 4, 3)
    feeder = ReplayFeeder(buffer, counting_stream(5), batch, ratio)
    counts = torch.zeros(5000, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    steps = 600
    for step in range(steps):
        feeder.advance(step)
        counts.index_add_(0, buffer.sample(batch, generator)["image_index"], torch.ones(batch, dtype=torch.int64))
    # Transitions that entered after the first fill and left before the end lived a whole life in the buffer.
    lived = counts[capacity + 100 : feeder.delivered - capacity]
    assert abs(float(lived.float().mean()) - ratio) < 0.15


def test_resume_rebuilds_the_same_buffer_rows():
    straight = ReplayBuffer(20, 4, 3)
    feeder = ReplayFeeder(straight, counting_stream(), 8, 2.0)
    for step in range(13):
        feeder.advance(step)
    resumed_buffer = ReplayBuffer(20, 4, 3)
    resumed = ReplayFeeder(resumed_buffer, counting_stream(), 8, 2.0)
    resumed.resume(feeder.delivered)
    for key, value in straight.storage.items():
        assert torch.equal(value, resumed_buffer.storage[key]), key
    assert (resumed_buffer.position, len(resumed_buffer)) == (straight.position, len(straight))
    for step in range(13, 20):  # and both go on alike
        feeder.advance(step)
        resumed.advance(step)
    assert torch.equal(straight.storage["image_index"], resumed_buffer.storage["image_index"])
    early = ReplayFeeder(ReplayBuffer(20, 4, 3), counting_stream(), 8, 2.0)
    early.resume(6)  # before the first fill had finished
    assert len(early.buffer) == 6 and early.buffer.position == 6


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def test_memory_stays_bounded_over_a_stream_many_times_the_buffer(tiny_shapes):
    """A streamed run of 50 buffers' worth of rendered transitions: the buffer keeps its storage and the process
    does not grow with the run."""
    env = ViewTransformVectorEnv(16, dataset="shapes", root=str(tiny_shapes), obs_size=32, progress=False,
                                 autoreset_mode="disabled", **rrc_env_kwargs(4))
    collector = TransitionCollector(env, seed=0)
    buffer = ReplayBuffer(512, 32, env.num_categories)
    storage = {key: value.data_ptr() for key, value in buffer.storage.items()}
    feeder = ReplayFeeder(buffer, collector.stream, batch_size=64, replay_ratio=0.5)  # 128 fresh per step
    feeder.advance(0)
    for step in range(1, 20):  # warm up allocator caches
        feeder.advance(step)
    gc.collect()
    before = _rss_mb()
    steps = 200
    for step in range(20, 20 + steps):
        feeder.advance(step)
        buffer.sample(64)
    gc.collect()
    grown = _rss_mb() - before
    fields = transition_fields(32, env.num_categories).values()
    streamed = steps * 128 * sum(torch.empty(shape, dtype=dtype).nbytes for shape, dtype in fields)
    assert feeder.delivered >= 50 * buffer.capacity
    assert {key: value.data_ptr() for key, value in buffer.storage.items()} == storage
    assert grown < 0.1 * streamed / 2**20, f"the process grew {grown:.0f} MB while streaming {streamed / 2**20:.0f} MB"


# ----------------------------------------------------------------------------------------------- WebDataset shards


def test_tar_shards_are_plain_webdataset_shards(tmp_path):
    """Any webdataset pipeline reads the tar container: one sample per transition, keyed by its position in the
    log, one .npy member per field; the first sample carries the metadata."""
    import json as json_module

    import webdataset as wds

    batch = synthetic(7)
    dataset = write_shards(tmp_path / "tar", [batch], None, shard_size=4, shard_format="tar",
                           metadata={"dataset": "toy"})
    samples = list(wds.WebDataset([str(p) for p in dataset.shard_paths], shardshuffle=False).decode())
    header, rows = samples[0], [s for s in samples if s["__key__"] != "__metadata__"]
    assert header["__key__"] == "__metadata__"
    meta = header["json"] if isinstance(header["json"], dict) else json_module.loads(header["json"])
    assert meta["metadata"]["dataset"] == "toy" and meta["format_version"] == dataset.metadata["format_version"]
    assert [r["__key__"] for r in rows] == [f"{i:09d}" for i in range(7)]
    for i, row in enumerate(rows):
        for key, value in batch.items():
            assert (row[f"{key}.npy"] == value[i].numpy()).all(), (i, key)


def test_corrupt_tar_shards_name_the_file(tmp_path):
    from agents.data import ShardDataset, ShardFormatError

    dataset = write_shards(tmp_path, [synthetic(8)], None, shard_size=4, shard_format="tar")
    first, second = dataset.shard_paths
    second.write_bytes(second.read_bytes()[:3000])  # torn inside a member
    with pytest.raises(ShardFormatError, match=second.name):
        ShardDataset(tmp_path).load_shard(1)
    first.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ShardFormatError, match=first.name):
        ShardDataset(tmp_path).load_shard(0)
    with pytest.raises(ValueError, match="shard_format='zip' is invalid"):
        write_shards(tmp_path / "other", [synthetic(2)], None, shard_format="zip")
