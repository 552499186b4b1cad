"""Images streamed from WebDataset shards through the webdataset library: a set larger than the pool reaches the
pool whole, ranks read disjoint shares, corrupt samples are skipped and counted, memory stays bounded, and the
environments and the pretrainer run on a stream."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import torch
from conftest import encoded_image, write_shard

from view_env.data import DatasetNotFoundError, NoReadableImagesError, SkippedImagesWarning, load_dataset
from view_env.data.stream import StreamingImagePool, WebDatasetShards
from view_env.vector import ViewTransformVectorEnv


def colour_of(number: int) -> tuple[int, int, int]:
    """A distinct colour per image, far enough apart to survive JPEG."""
    return (40 * (number % 6) + 20, 40 * ((number // 6) % 6) + 20, 60 * ((number // 36) % 4) + 20)


def write_set(folder, num_shards: int, per_shard: int, size=(24, 16)):
    """``num_shards`` shards of ``per_shard`` one-colour JPEGs with a caption each; returns the pattern and
    ``{"<shard>:<key>": number}`` of every image."""
    keys = {}
    for shard in range(num_shards):
        samples = {}
        for position in range(per_shard):
            number = shard * per_shard + position
            samples[f"img{number:05d}"] = {"jpg": encoded_image(colour_of(number), size=size),
                                           "txt": f"image number {number}\n".encode()}
            keys[f"{shard:03d}.tar:img{number:05d}"] = number
        write_shard(folder / f"{shard:03d}.tar", samples)
    return str(folder / f"{{000..{num_shards - 1:03d}}}.tar"), keys


def drain(pool: StreamingImagePool, timeout: float = 60.0) -> set[str]:
    """Refresh until a one-pass stream has delivered everything; every key that was ever resident."""
    seen = set(pool.keys)
    deadline = time.monotonic() + timeout
    while not pool.exhausted:
        assert time.monotonic() < deadline, f"the stream stalled after {pool.num_streamed} images"
        if pool.refresh() == 0:
            time.sleep(0.01)
        seen |= set(pool.keys)
    return seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_image_of_a_set_larger_than_the_pool_reaches_it(tmp_path, num_workers):
    pattern, keys = write_set(tmp_path, num_shards=6, per_shard=10)
    with StreamingImagePool(pattern, 8, canvas_size=16, num_workers=num_workers, shuffle_buffer=16, loop=False,
                            progress=False) as pool:
        assert len(pool) == 8 and pool.images.shape == (8, 3, 16, 16)
        first = list(pool.keys)
        seen = drain(pool)
        assert seen == set(keys), f"never resident: {sorted(set(keys) - seen)[:5]}"
        assert pool.num_streamed == 60 and pool.passes == 1 and pool.num_skipped == 0
        # Every slot holds the image its key names (decoded, resized, with its caption and original size).
        for slot, key in enumerate(pool.keys):
            number = keys[key]
            mean = pool.images[slot].float().mean(dim=(1, 2)).numpy()
            assert np.abs(mean - colour_of(number)).max() < 8, (key, mean)
            assert pool.captions[slot] == (f"image number {number}",)
            assert pool.sizes[slot].tolist() == [16, 24]
        assert len(set(pool.dataset_index.tolist())) == 8  # numbered in stream order
    # The shuffle buffer mixes: the first images are not simply the first shard in written order.
    assert first != [f"000.tar:img{n:05d}" for n in range(8)]


def test_ranks_read_disjoint_shares_that_cover_the_set(tmp_path):
    pattern, keys = write_set(tmp_path, num_shards=5, per_shard=6)
    shares = []
    for rank in range(2):
        source = WebDatasetShards(pattern, rank=rank, world_size=2)
        assert source.rank_urls == source.urls[rank::2]
        with StreamingImagePool(source, 4, canvas_size=8, num_workers=1, loop=False, progress=False) as pool:
            shares.append(drain(pool))
    assert shares[0].isdisjoint(shares[1])
    assert shares[0] | shares[1] == set(keys)
    assert {k.split(":")[0] for k in shares[0]} == {"000.tar", "002.tar", "004.tar"}


def test_rank_and_world_size_come_from_torchrun(tmp_path, monkeypatch):
    pattern, _ = write_set(tmp_path, num_shards=4, per_shard=1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    source = WebDatasetShards(pattern)
    assert (source.rank, source.world_size) == (3, 4) and [u[-7:] for u in source.rank_urls] == ["003.tar"]


def test_corrupt_samples_are_skipped_counted_and_never_fatal(tmp_path):
    write_shard(tmp_path / "000.tar", {
        "good0": {"jpg": encoded_image((200, 20, 20))},
        "broken": {"jpg": b"this is not a jpeg"},
        "textonly": {"txt": b"a caption without an image"},
        "good1": {"png": encoded_image((20, 200, 20), fmt="PNG")},
    })
    truncated = write_shard(tmp_path / "001.tar", {"good2": {"jpg": encoded_image((20, 20, 200))},
                                                   "lost": {"jpg": encoded_image((9, 9, 9), size=(300, 300))}})
    truncated.write_bytes(truncated.read_bytes()[:2500])  # cut inside the second member
    with pytest.warns(SkippedImagesWarning, match=r"skipped \d+ sample"):
        pool = StreamingImagePool(str(tmp_path / "*.tar"), 8, canvas_size=8, num_workers=0, shuffle_buffer=0,
                                  loop=False, progress=False)
    with pool:
        seen = drain(pool)
        assert seen == {"000.tar:good0", "000.tar:good1", "001.tar:good2"}
        # broken (not an image), textonly (no image member), and the truncated shard: its member cut short, then
        # the shard's missing end.
        assert pool.num_skipped == 4
        assert any("broken" in e for e in pool._skip_examples) and any("textonly" in e for e in pool._skip_examples)


def test_a_set_with_no_readable_image_is_an_error(tmp_path):
    write_shard(tmp_path / "000.tar", {"a": {"jpg": b"garbage"}, "b": {"txt": b"caption"}})
    with pytest.raises(NoReadableImagesError, match="no image could be read"):
        StreamingImagePool(str(tmp_path / "000.tar"), 4, num_workers=0, progress=False)


def test_bad_patterns_and_shares_are_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nothing/007\.tar \(does not exist\)"):
        WebDatasetShards(str(tmp_path / "nothing" / "{005..007}.tar"))
    with pytest.raises(DatasetNotFoundError, match=r"\*\.tar \(glob matched nothing\)"):
        WebDatasetShards(str(tmp_path / "*.tar"))
    with pytest.raises(DatasetNotFoundError, match="a folder, not a shard"):
        WebDatasetShards(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="an empty list"):
        WebDatasetShards([])
    pattern, _ = write_set(tmp_path, num_shards=2, per_shard=1)
    with pytest.raises(ValueError, match="2 shard\\(s\\) are too few for 3 ranks"):
        WebDatasetShards(pattern, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        WebDatasetShards(pattern, rank=2, world_size=2)
    with pytest.raises(ValueError, match="shuffle_buffer=-1"):
        StreamingImagePool(pattern, 2, shuffle_buffer=-1, progress=False)
    with pytest.raises(ValueError, match="capacity"):
        StreamingImagePool(pattern, 0, progress=False)


def _rss_mb() -> float:
    import resource

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def test_memory_stays_bounded_over_many_passes(tmp_path):
    """Streaming a set 25 times over (50x the pool's images): the pool keeps its storage, nothing accumulates."""
    pattern, keys = write_set(tmp_path, num_shards=4, per_shard=20, size=(64, 48))
    with StreamingImagePool(pattern, 16, canvas_size=32, num_workers=1, shuffle_buffer=32, progress=False) as pool:
        storage = pool.images.data_ptr()

        def stream(count: int) -> None:
            target = pool.num_streamed + count
            deadline = time.monotonic() + 120
            while pool.num_streamed < target:
                assert time.monotonic() < deadline, "the stream stalled"
                if pool.refresh() == 0:
                    time.sleep(0.002)

        stream(200)  # warm up allocator caches and the worker
        gc.collect()
        before = _rss_mb()
        stream(25 * len(keys))
        gc.collect()
        grown = _rss_mb() - before
        streamed_mb = 25 * len(keys) * 32 * 32 * 3 / 2**20
        assert pool.passes >= 20
        assert pool.images.data_ptr() == storage and pool._ready.qsize() <= pool._ready.maxsize
        assert len(pool.keys) == len(pool.captions) == 16
        assert grown < max(8.0, 0.5 * streamed_mb), f"the process grew {grown:.1f} MB while streaming {streamed_mb:.1f}"


def test_environment_steps_on_a_stream(tmp_path):
    pattern, keys = write_set(tmp_path, num_shards=3, per_shard=8)
    env = ViewTransformVectorEnv(4, dataset="webdataset", root=pattern, max_images=6, obs_size=8, progress=False,
                                 dataset_kwargs={"num_workers": 1, "shuffle_buffer": 4})
    try:
        assert isinstance(env.bank, StreamingImagePool) and len(env.bank) == 6
        obs, info = env.reset(seed=0)
        assert obs.shape == (4, 3, 8, 8) and obs.dtype == torch.uint8
        seen = set()
        for _ in range(60):  # episodes end (16 steps) and reset, refreshing the pool from the stream
            obs, reward, terminated, truncated, info = env.step(torch.zeros(4, dtype=torch.int64))
            seen |= {env.bank.keys[s] for s in env.state.slot.tolist()}
        assert env.bank.num_streamed > 6, "resets never took an image from the stream"
        assert seen <= set(keys) and len(seen) > 4
    finally:
        env.close()
    assert isinstance(load_dataset("webdataset", root=pattern), WebDatasetShards)


def test_the_pretrainer_trains_from_a_stream(tmp_path):
    from agents.config import PretrainConfig
    from agents.pretrain import train

    pattern, _ = write_set(tmp_path / "shards", num_shards=4, per_shard=12, size=(48, 40))
    config = PretrainConfig(env="webdataset", root=pattern, annotations="views", max_images=16, obs_size=16,
                            embed_dim=16, value_depth=1, value_dim=16, num_next_actions=2, total_steps=3,
                            batch_size=8, buffer_size=32, num_envs=4, warmup_steps=1, out=str(tmp_path / "run"),
                            probe=False, progress=False)
    summary = train(config)
    assert summary["step"] == 3 and all(np.isfinite(summary["losses"]))
    with pytest.raises(ValueError, match="--annotations 'captions' is invalid.*a stream has not"):
        PretrainConfig(env="webdataset", root=pattern, annotations="captions")
    with pytest.raises(ValueError, match="--root None is invalid.*shard pattern"):
        PretrainConfig(env="webdataset", annotations="views")
