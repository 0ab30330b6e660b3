"""Data loaders: Omniglot formats agree byte-for-byte, splits are disjoint and deterministic.

Real-data tests use the shared data (``default_data_root()``) and skip when it is absent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from innerloop_training.data import (
    ALPHABETS,
    ChecksumError,
    LabelledImages,
    LogisticTasks,
    SineTasks,
    build_quickdraw_splits,
    default_data_root,
    download_omniglot,
    download_quickdraw,
    load_image_dataset,
    load_image_folder,
    load_omniglot,
    load_omniglot_zip,
    load_quickdraw345,
    load_quickdraw_folder,
    make_task_family,
    omniglot_alphabet_of,
    omniglot_alphabet_split,
    omniglot_alphabets,
    omniglot_character_id,
    omniglot_class_name,
    quickdraw_category_split,
    read_bitmap_file,
    split_names,
    verify_checksum,
    vinyals_split,
)
from PIL import Image

from innerloop.preprocessing import prepare_image

# ---------------------------------------------------------------------------------------------
# fixtures


def _data_dir(*parts: str) -> Path:
    root = default_data_root()
    if root is None or not root.joinpath(*parts).exists():
        pytest.skip(f"shared data not available ({'/'.join(parts)})")
    return root.joinpath(*parts)


@pytest.fixture(scope="module")
def background() -> LabelledImages:
    return load_omniglot(_data_dir("omniglot", "images_background.npz").parent, background=True)


@pytest.fixture(scope="module")
def small1() -> LabelledImages:
    return load_omniglot_zip(_data_dir("omniglot", "images_background_small1.zip"))


# ---------------------------------------------------------------------------------------------
# Omniglot


def test_alphabet_table_is_contiguous_and_complete() -> None:
    assert ALPHABETS[0][0] == 1 and ALPHABETS[-1][1] == 1623
    for (_, last, _, _), (first, _, _, _) in itertools.pairwise(ALPHABETS):
        assert first == last + 1
    assert len(omniglot_alphabets(True)) == 30 and len(omniglot_alphabets(False)) == 20
    assert omniglot_class_name(1) == "Arcadian/character01"
    assert omniglot_class_name(709) == "Alphabet_of_the_Magi/character01"
    assert omniglot_class_name(964) == "Tifinagh/character55"
    assert omniglot_class_name(965) == "Angelic/character01"
    assert omniglot_character_id("Latin/character26@rot90") == 708
    assert omniglot_alphabet_of("Japanese_(katakana)/character03@rot180") == "Japanese_(katakana)"
    with pytest.raises(ValueError):
        omniglot_class_name(1624)


def test_npz_background_layout(background: LabelledImages) -> None:
    assert background.num_classes == 964 and background.counts() == [20] * 964
    assert background.image_size == 28
    assert background.class_names[0] == "Arcadian/character01"
    assert len({omniglot_alphabet_of(n) for n in background.class_names}) == 30
    images = np.stack(background.images)
    assert images.dtype == np.uint8
    # ink-high: the border is mostly background (dark); a few strokes do touch the edge
    border = np.concatenate([images[:, :, 0, :], images[:, :, -1, :]], axis=-1)
    assert np.median(border, axis=-1).max() == 0 and border.mean() < 2
    assert (images.reshape(len(images) * 20, -1).max(axis=1) > 128).all()


def test_small1_zip_matches_npz_pixel_for_pixel(
    background: LabelledImages, small1: LabelledImages
) -> None:
    """Lake's small1 zip is a subset of images_background: same names, same bytes, same order."""
    assert small1.num_classes == 136
    assert {omniglot_alphabet_of(n) for n in small1.class_names} == {
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Korean",
        "Latin",
    }
    index = {n: i for i, n in enumerate(background.class_names)}
    assert all(n in index for n in small1.class_names)
    positions = [index[n] for n in small1.class_names]
    assert positions == sorted(positions)  # both ordered by Lake's character id
    for name, images in zip(small1.class_names, small1.images, strict=True):
        np.testing.assert_array_equal(images, background.images[index[name]], err_msg=name)


def test_zip_at_full_resolution_matches_raw_npz() -> None:
    """At 105x105 prepare_image only inverts, so the zip PNG must equal the npz bool exactly."""
    npz = _data_dir("omniglot", "images_background.npz")
    with np.load(npz) as data:
        raw = data["images"][393]  # id 394 = Greek/character01
    with zipfile.ZipFile(_data_dir("omniglot", "images_background_small1.zip")) as zf:
        png = zf.read("images_background_small1/Greek/character01/0394_07.png")
    from io import BytesIO

    with Image.open(BytesIO(png)) as img:
        from_zip = prepare_image(img, 105)
    expected = np.where(raw[6], 0, 255).astype(np.uint8)  # True = white background
    np.testing.assert_array_equal(from_zip, expected)
    np.testing.assert_array_equal(prepare_image(raw[6], 105), expected)


def test_unzipped_folder_matches_npz(tmp_path: Path, background: LabelledImages) -> None:
    npz = _data_dir("omniglot", "images_background.npz")
    with np.load(npz) as data:
        raw = data["images"]
    chosen = [1, 394, 395, 964]  # Arcadian/01, Greek/01, Greek/02, Tifinagh/55
    for char_id in reversed(chosen):  # write out of order: the loader must sort by id
        folder = tmp_path / "images_background" / omniglot_class_name(char_id)
        folder.mkdir(parents=True)
        for d in range(3):
            pixels = np.where(raw[char_id - 1, d], 255, 0).astype(np.uint8)
            Image.fromarray(pixels).convert("1").save(folder / f"{char_id:04d}_{d + 1:02d}.png")
    loaded = load_omniglot(tmp_path, background=True)
    assert loaded.class_names == [omniglot_class_name(i) for i in chosen]
    assert loaded.source["format"] == "folder"
    for char_id, images in zip(chosen, loaded.images, strict=True):
        np.testing.assert_array_equal(images, background.images[char_id - 1][:3])


def test_load_omniglot_reports_missing_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        load_omniglot(tmp_path, background=False)


def test_vinyals_split() -> None:
    split = vinyals_split()
    assert len(split["train"]) == 1200 and len(split["test"]) == 423 and split["val"] == []
    assert set(split["train"]).isdisjoint(split["test"])
    assert len(set(split["train"]) | set(split["test"])) == 1623
    assert vinyals_split() == split  # fixed seed: the same split for everyone
    assert vinyals_split(seed=1)["test"] != split["test"]
    carved = vinyals_split(n_val=100)
    assert carved["test"] == split["test"] and len(carved["val"]) == 100
    assert set(carved["train"]) | set(carved["val"]) == set(split["train"])
    # mixes alphabets from both sets, as Vinyals et al. did
    assert {omniglot_character_id(n) > 964 for n in split["train"]} == {True, False}


def test_alphabet_split_scheme() -> None:
    split = omniglot_alphabet_split(seed=0)
    assert len(split["val"]) == 5 and len(split["train"]) == 25 and len(split["test"]) == 20
    assert set(split["train"]).isdisjoint(split["val"])
    assert omniglot_alphabet_split(seed=0) == split
    assert omniglot_alphabet_split(seed=1)["val"] != split["val"]


def test_registry_omniglot_val_and_test() -> None:
    root = _data_dir("omniglot").parent
    val = load_image_dataset("omniglot", "val", root, seed=3)
    alphabets = {omniglot_alphabet_of(n) for n in val.class_names}
    assert alphabets == set(omniglot_alphabet_split(seed=3)["val"])
    assert val.source["split"] == "val" and val.source["dataset"] == "omniglot"
    test = load_image_dataset("omniglot", "test", root, rotations=True)
    assert test.num_classes == 659 * 4
    assert {omniglot_alphabet_of(n) for n in test.class_names} == set(omniglot_alphabets(False))


# ---------------------------------------------------------------------------------------------
# rotations, splits


def test_with_rotations() -> None:
    img = np.zeros((2, 5, 5), dtype=np.uint8)
    img[:, 0, 1] = 255  # asymmetric mark in the top row
    data = LabelledImages(["Greek/character01", "b"], [img, img.copy()], {"dataset": "t"})
    rotated = data.with_rotations()
    assert rotated.num_classes == 8
    assert rotated.class_names[:4] == [
        "Greek/character01",
        "b",
        "Greek/character01@rot90",
        "b@rot90",
    ]
    assert rotated.class_names[-1] == "b@rot270"
    np.testing.assert_array_equal(rotated.images[2], np.rot90(img, 1, axes=(1, 2)))
    assert rotated.images[2][0, 3, 0] == 255  # counter-clockwise: top row -> left column
    np.testing.assert_array_equal(rotated.images[4], img[:, ::-1, ::-1])
    assert omniglot_alphabet_of(rotated.class_names[2]) == "Greek"
    assert rotated.source["rotations"] == [90, 180, 270]


def test_labelled_images_validation() -> None:
    good = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="duplicate"):
        LabelledImages(["a", "a"], [good, good])
    with pytest.raises(ValueError, match="uint8"):
        LabelledImages(["a"], [good.astype(np.float32)])
    with pytest.raises(ValueError, match="shape"):
        LabelledImages(["a", "b"], [good, np.zeros((1, 5, 5), np.uint8)])
    data = LabelledImages(["a", "b", "c"], [good, good, good])
    assert data.select(["c", "a"]).class_names == ["c", "a"]
    with pytest.raises(KeyError):
        data.select(["z"])


def test_split_names_deterministic_and_forced() -> None:
    names = [f"c{i:03d}" for i in range(100)]
    split = split_names(reversed(names), seed=7)
    assert split == split_names(names, seed=7)  # input order does not matter
    assert [len(split[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    forced = split_names(names, seed=7, force_train=names[:50])
    assert set(names[:50]) <= set(forced["train"])
    assert len(forced["val"]) == 10 and len(forced["test"]) == 20
    with pytest.raises(ValueError):
        split_names(names, seed=0, fractions=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# folder loader


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_image_folder_loader(tmp_path: Path) -> None:
    dark_on_light = Image.new("L", (40, 30), 255)
    dark_on_light.paste(0, (15, 10, 25, 20))
    transparent = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    transparent.paste((0, 0, 0, 255), (10, 10, 20, 20))
    _save(tmp_path / "circle" / "a.png", dark_on_light)
    _save(tmp_path / "circle" / "b.JPG", dark_on_light.convert("RGB"))
    _save(tmp_path / "circle" / ".hidden.png", dark_on_light)  # ignored
    _save(tmp_path / "group" / "square" / "c.png", transparent)
    _save(tmp_path / "group" / "square" / "d.gif", dark_on_light)
    _save(tmp_path / "group" / "square" / "e.webp", dark_on_light)
    _save(tmp_path / "group" / "square" / "f.bmp", dark_on_light)
    (tmp_path / "circle" / "notes.txt").write_text("not an image")  # ignored

    data = load_image_folder(tmp_path, size=28)
    assert data.class_names == ["circle", "group/square"]
    assert data.counts() == [2, 4]
    assert data.image_size == 28
    for images in data.images:
        assert (images[:, 14, 14] > 200).all()  # the drawn square became ink-high
        assert (images[:, 0, 0] < 30).all()  # background low
    expected = prepare_image(dark_on_light, 28)
    np.testing.assert_array_equal(data.images[0][0], expected)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    _save(tmp_path / "ok" / "a.png", Image.new("L", (8, 8), 255))
    with pytest.raises(ValueError, match="empty_class"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").rmdir()
    (tmp_path / "ok" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_image_folder(tmp_path)
    (tmp_path / "ok" / "broken.png").unlink()
    _save(tmp_path / "stray.png", Image.new("L", (8, 8), 255))
    with pytest.raises(ValueError, match="directly in the folder"):
        load_image_folder(tmp_path)


def test_registry_folder_split(tmp_path: Path) -> None:
    for i in range(10):
        _save(tmp_path / f"class{i}" / "x.png", Image.new("L", (8, 8), 255))
    parts = {
        s: load_image_dataset("folder", s, path=tmp_path, seed=1) for s in ("train", "val", "test")
    }
    names = [n for p in parts.values() for n in p.class_names]
    assert sorted(names) == sorted(f"class{i}" for i in range(10))
    assert [p.num_classes for p in parts.values()] == [7, 1, 2]


# ---------------------------------------------------------------------------------------------
# Quick Draw


def test_quickdraw_folder_loader() -> None:
    folder = _data_dir("quickdraw")
    data = load_quickdraw_folder(folder, ["cat", "The Mona Lisa"], max_per_class=10)
    assert data.class_names == ["cat", "The Mona Lisa"]
    assert [a.shape for a in data.images] == [(10, 28, 28), (10, 28, 28)]
    raw = np.load(folder / "cat.npy")[:10].reshape(10, 28, 28)
    np.testing.assert_array_equal(data.images[0], raw)  # no-op preprocessing at 28
    everything = load_quickdraw_folder(folder, max_per_class=1)
    assert everything.num_classes == 61  # the helper script in the folder is ignored
    with pytest.raises(FileNotFoundError, match="unicorn"):
        load_quickdraw_folder(folder, ["unicorn"])


def test_quickdraw_raw_records_and_npy_shapes(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 256, size=(5, 784), dtype=np.uint8)
    rows.tofile(tmp_path / "raw.bin")  # headerless records, as many repos commit them
    np.save(tmp_path / "nested.npy", rows.reshape(5, 1, 784))
    (tmp_path / "renamed.npy").write_bytes(rows.tobytes())  # raw bytes with a .npy name
    for name in ("raw.bin", "nested.npy", "renamed.npy"):
        np.testing.assert_array_equal(read_bitmap_file(tmp_path / name), rows)
    (tmp_path / "bad.npy").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"bad\.npy"):
        read_bitmap_file(tmp_path / "bad.npy")


def test_quickdraw345_loader() -> None:
    npz = _data_dir("quickdraw345", "quickdraw345_sketches.npz")
    data = load_quickdraw345(npz, ["zigzag", "hot air balloon"])
    assert data.counts() == [25, 25] and data.image_size == 28
    with pytest.raises(KeyError):
        load_quickdraw345(npz, ["no such thing"])


def test_quickdraw_splits_disjoint_across_sources() -> None:
    rich = _data_dir("quickdraw")
    npz = _data_dir("quickdraw345", "quickdraw345_sketches.npz")
    splits = build_quickdraw_splits(rich, npz, seed=0, max_per_class=30)
    names = {k: set(v.class_names) for k, v in splits.items()}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])
    assert len(names["train"] | names["val"] | names["test"]) == 345
    assert [len(names[k]) for k in ("train", "val", "test")] == [242, 34, 69]
    # a rich category is loaded from the rich folder (30 rows), never also from the 25-row npz
    rich_names = {p.stem for p in rich.glob("*.npy")}
    for data in splits.values():
        for name, count in zip(data.class_names, data.counts(), strict=True):
            assert count == (30 if name in rich_names else 25), name
    # deterministic, and the datasets follow the pure category split
    assert quickdraw_category_split(sorted(names["train"] | names["val"] | names["test"]), 0) == {
        k: sorted(v) for k, v in names.items()
    }
    assert quickdraw_category_split(list(rich_names), 1) != quickdraw_category_split(
        list(rich_names), 2
    )


def test_quickdraw_rich_in_train_via_registry() -> None:
    root = _data_dir("quickdraw").parent
    _data_dir("quickdraw345")
    val = load_image_dataset("quickdraw", "val", root, seed=5, rich_in_train=True)
    test = load_image_dataset("quickdraw", "test", root, seed=5, rich_in_train=True)
    rich_names = {p.stem for p in (root / "quickdraw").glob("*.npy")}
    assert val.num_classes == 34 and test.num_classes == 69
    assert rich_names.isdisjoint(val.class_names) and rich_names.isdisjoint(test.class_names)
    assert set(val.class_names).isdisjoint(test.class_names)
    assert val.source["rich_in_train"] is True and val.source["split"] == "val"


# ---------------------------------------------------------------------------------------------
# checksums and downloads (no network: file:// URLs)

HELLO_MD5 = "b1946ac92492d2347c6235b4d2611184"  # md5 of b"hello\n"
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def test_verify_checksum(tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    verify_checksum(path, md5=HELLO_MD5)
    verify_checksum(path, md5=HELLO_MD5.upper(), sha256=HELLO_SHA256)
    with pytest.raises(ChecksumError, match=r"hello\.txt.*md5"):
        verify_checksum(path, md5="0" * 32)
    with pytest.raises(ChecksumError, match="sha256"):
        verify_checksum(path, md5=HELLO_MD5, sha256="f" * 64)
    with pytest.raises(ValueError):
        verify_checksum(path)


def test_download_omniglot_verifies(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "images_background.zip").write_bytes(b"hello\n")
    base = mirror.as_uri() + "/{name}"
    out = download_omniglot(tmp_path / "a", base, {"images_background.zip": HELLO_MD5})
    assert out["images_background.zip"].read_bytes() == b"hello\n"
    download_omniglot(tmp_path / "a", base, {"images_background.zip": HELLO_MD5})  # reuse
    with pytest.raises(ChecksumError):
        download_omniglot(tmp_path / "b", base, {"images_background.zip": "0" * 32})
    assert not (tmp_path / "b" / "images_background.zip").exists()  # bad download removed
    assert [p.name for p in (tmp_path / "b").iterdir()] == []  # and no temp file left


def test_download_quickdraw_records_sha256(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rows = np.arange(2 * 784, dtype=np.int64).astype(np.uint8).reshape(2, 784)
    np.save(mirror / "hot air balloon.npy", rows)
    template = mirror.as_uri() + "/{category}.npy"
    dest = tmp_path / "qd"
    out = download_quickdraw(["hot air balloon"], dest, template)
    target = out["hot air balloon"]
    record = json.loads((dest / "hot air balloon.npy.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert "hot%20air%20balloon" in record["url"]
    download_quickdraw(["hot air balloon"], dest, template)  # verified on re-use
    np.save(target, rows[:1])  # the file changes under us
    with pytest.raises(ChecksumError, match="hot air balloon"):
        download_quickdraw(["hot air balloon"], dest, template)


# ---------------------------------------------------------------------------------------------
# regression task families


@pytest.mark.parametrize("generator", [torch.Generator().manual_seed(0), np.random.default_rng(0)])
def test_sine_tasks(generator: torch.Generator | np.random.Generator) -> None:
    tasks = SineTasks()
    batch = tasks.sample(8, 5, 7, generator)
    assert batch.support_x.shape == (8, 5, 1) and batch.query_y.shape == (8, 7, 1)
    assert all(t.dtype == torch.float32 for t in (batch.support_x, batch.support_y, batch.query_x))
    assert batch.support_x.abs().max() <= 5.0 and batch.query_x.abs().max() <= 5.0
    for b, params in enumerate(batch.params):
        assert 0.1 <= params["amplitude"] <= 5.0 and 0.0 <= params["phase"] <= math.pi
        expected = tasks.function(params, batch.query_x[b])
        torch.testing.assert_close(batch.query_y[b], expected)
        assert batch.support_y[b].abs().max() <= params["amplitude"] + 1e-5


def test_regression_determinism_and_logistic() -> None:
    a = LogisticTasks().sample(4, 3, 3, np.random.default_rng(1))
    b = make_task_family("logistic").sample(4, 3, 3, np.random.default_rng(1))
    torch.testing.assert_close(a.query_y, b.query_y)
    assert a.params == b.params
    t1 = SineTasks().sample(4, 3, 3, torch.Generator().manual_seed(2))
    t2 = SineTasks().sample(4, 3, 3, torch.Generator().manual_seed(2))
    torch.testing.assert_close(t1.support_y, t2.support_y)
    for b_idx, params in enumerate(a.params):
        assert 0.5 <= params["L"] <= 5.0 and 0.5 <= params["k"] <= 3.0
        assert -3.0 <= params["x0"] <= 3.0
        ys = a.support_y[b_idx]
        assert (ys > 0).all() and (ys < params["L"]).all()
    x = np.linspace(-5, 5, 11)
    y = LogisticTasks().function({"L": 2.0, "k": 1.0, "x0": 0.0}, x)
    assert isinstance(y, np.ndarray) and y[5] == pytest.approx(1.0)
    assert SineTasks().function({"amplitude": 2.0, "phase": 0.0}, math.pi / 2) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        make_task_family("cosine")
    with pytest.raises(ValueError):
        load_image_dataset("sine", "train")


def test_sketches_is_both_training_sets_and_episodes_keep_to_one_domain() -> None:
    from innerloop_training.episodes import fixed_episodes
    from innerloop_training.sources import ImageTaskSource, build_source

    root = _data_dir("quickdraw").parent
    _data_dir("omniglot")
    sketches = load_image_dataset("sketches", "val", root, max_per_class=20)
    parts = {
        d: load_image_dataset(d, "val", root, max_per_class=20) for d in ("omniglot", "quickdraw")
    }
    assert sketches.class_names == [
        f"{d}/{n}" for d in ("omniglot", "quickdraw") for n in parts[d].class_names
    ]
    assert sketches.source["dataset"] == "sketches"
    # neither test set leaks into the sketches training classes
    train = set(load_image_dataset("sketches", "train", root, max_per_class=1).class_names)
    for domain in ("omniglot", "quickdraw"):
        test = load_image_dataset(domain, "test", root, max_per_class=1).class_names
        assert train.isdisjoint(f"{domain}/{n}" for n in test)
    source = build_source("sketches", "val", ways=5, shots=1, queries=1, seed=3, data_root=root)
    assert isinstance(source, ImageTaskSource)
    domains = set()
    for batch in fixed_episodes(source.data, 5, 1, 1, 40, 3, groups=source.groups):
        for names in batch.class_names:
            assert len({n.split("/", 1)[0] for n in names}) == 1  # one domain per episode
            domains.add(names[0].split("/", 1)[0])
    assert domains == {"omniglot", "quickdraw"}
