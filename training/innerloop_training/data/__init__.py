"""Data sources for meta-training: every image source becomes a :class:`LabelledImages`.

``registry.load_image_dataset(name, split, ...)`` is the entry point for training and evaluation;
the per-source loaders are exported for tools and tests.
"""

from innerloop_training.data.download import ChecksumError, file_digest, verify_checksum
from innerloop_training.data.folder import IMAGE_EXTENSIONS, load_image_folder
from innerloop_training.data.labelled_images import SPLITS, LabelledImages, split_names
from innerloop_training.data.omniglot import (
    ALPHABETS,
    VINYALS_SPLIT_SEED,
    all_omniglot_class_names,
    download_omniglot,
    load_omniglot,
    load_omniglot_folder,
    load_omniglot_npz,
    load_omniglot_zip,
    omniglot_alphabet_of,
    omniglot_alphabets,
    omniglot_character_id,
    omniglot_class_name,
    vinyals_split,
)
from innerloop_training.data.quickdraw import (
    build_quickdraw_splits,
    download_quickdraw,
    load_quickdraw345,
    load_quickdraw_folder,
    quickdraw_category_split,
    read_bitmap_file,
)
from innerloop_training.data.registry import (
    DATASETS,
    IMAGE_DATASETS,
    REGRESSION_DATASETS,
    default_data_root,
    load_image_dataset,
    load_task_family,
    omniglot_alphabet_split,
)
from innerloop_training.data.regression import (
    LogisticTasks,
    RegressionBatch,
    RegressionTaskFamily,
    SineTasks,
    make_task_family,
)

__all__ = [
    "ALPHABETS",
    "DATASETS",
    "IMAGE_DATASETS",
    "IMAGE_EXTENSIONS",
    "REGRESSION_DATASETS",
    "SPLITS",
    "VINYALS_SPLIT_SEED",
    "ChecksumError",
    "LabelledImages",
    "LogisticTasks",
    "RegressionBatch",
    "RegressionTaskFamily",
    "SineTasks",
    "all_omniglot_class_names",
    "build_quickdraw_splits",
    "default_data_root",
    "download_omniglot",
    "download_quickdraw",
    "file_digest",
    "load_image_dataset",
    "load_image_folder",
    "load_omniglot",
    "load_omniglot_folder",
    "load_omniglot_npz",
    "load_omniglot_zip",
    "load_quickdraw345",
    "load_quickdraw_folder",
    "load_task_family",
    "make_task_family",
    "omniglot_alphabet_of",
    "omniglot_alphabet_split",
    "omniglot_alphabets",
    "omniglot_character_id",
    "omniglot_class_name",
    "quickdraw_category_split",
    "read_bitmap_file",
    "split_names",
    "verify_checksum",
    "vinyals_split",
]
