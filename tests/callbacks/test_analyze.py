"""``lit-vit analyze``: the full report for a checkpoint or a named model, without training."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vit.cli import main
from lit_vit.data import CLASS_NAMES, PIXEL_MEAN, PIXEL_STD
from lit_vit.image_data import ImageTestDataModule, match_classes
from lit_vit.pretrained import hugging_face_model, imagenet_names, resize_config
from tests.conftest import hparams_rows, read_events

CLASSES = ("boot", "coat", "shirt")
TINY_TIMM = "{depth: 2, embed_dim: 32, num_heads: 2, img_size: 32}"
# For the shared run's checkpoint (49 patches: a max flow per patch, image and cascade step),
# where a test is about data and classes; flow is analysed on the tiny timm model's 4 patches.
NO_FLOW = "--skip=flow"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder of 4 RGB images of different sizes per class."""
    folder = tmp_path_factory.mktemp("photos")
    generator = np.random.default_rng(0)
    for name in CLASSES:
        (folder / name).mkdir()
        for index in range(4):
            pixels = generator.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")
    return folder


def analyze(tmp_path: Path, *args: str) -> Path:
    """Run ``lit-vit analyze`` small and fast; the one version folder it wrote."""
    main(
        [
            "analyze",
            *args,
            f"--save_dir={tmp_path / 'logs'}",
            "--probe_size=3",
            "--test_images=12",
            "--faithfulness_images=6",
            "--batch_size=8",
        ]
    )
    (run_dir,) = (tmp_path / "logs").glob("analyze_*/version_*")
    return run_dir


def tiny_timm(photos: Path, model_kwargs: str = TINY_TIMM) -> list[str]:
    """The options of a random-weight tiny timm ViT analysed on ``photos``."""
    return [
        "--model=vit_tiny_patch16_224",
        "--pretrained=false",
        f"--model_kwargs={model_kwargs}",
        f"--data={photos}",
    ]


def report_rows(report: str, header: str) -> list[list[str]]:
    lines = report[report.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_a_timm_model_on_an_image_folder_gets_the_full_report_with_folder_classes(
    tmp_path, photos, caplog
):
    run_dir = analyze(
        tmp_path,
        *tiny_timm(photos),
    )
    report = (run_dir / "attention" / "report.md").read_text()
    assert "- Model: vit_tiny_patch16_224: 2 layers, width 32" in report
    assert f"- Data: the image folder {photos} (test 12 images)" in report
    assert "on 12 test images (the whole test set)" in report, "3 classes: scored"
    classes = [row[0] for row in report_rows(report, "| class | n |")]
    assert classes == list(CLASSES)
    for section in ("Which explainer can I trust here?", "Sanity checks", "Faithfulness"):
        assert f"{section}" in report
    assert (run_dir / "attention" / "test" / "resolution.png").is_file()
    assert "test_attention/rollout" in read_events(run_dir).Tags()["images"]


def test_a_model_with_other_classes_than_the_data_is_analysed_without_accuracy(tmp_path, photos):
    tiny_with_five_classes = TINY_TIMM.replace("}", ", num_classes: 5}")
    run_dir = analyze(
        tmp_path,
        *tiny_timm(photos, tiny_with_five_classes),
    )
    report = (run_dir / "attention" / "report.md").read_text()
    assert "- Test accuracy" not in report and "## Which explainer can I trust here?" in report
    # True classes by their folder names; predictions of the model's own 5 classes by number.
    probe_rows = report_rows(report, "| index | class | predicted |")
    assert {row[1] for row in probe_rows} <= set(CLASSES)
    assert all(re.fullmatch(r"class [0-4]", row[2]) for row in probe_rows), probe_rows
    assert "test/acc" not in read_events(run_dir).Tags()["scalars"]


def test_a_hugging_face_folder_is_read_with_its_own_preprocessing(tmp_path, photos):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "Shirt", 1: "Boot", 2: "Coat"},  # not the folders' order
        label2id={"Shirt": 0, "Boot": 1, "Coat": 2},
    )
    model_dir = tmp_path / "hf_vit"
    transformers.ViTForImageClassification(config).save_pretrained(model_dir)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4] * 3, image_std=[0.2] * 3
    ).save_pretrained(model_dir)
    _, data_config = hugging_face_model(str(model_dir), pretrained=True)
    assert data_config["mean"] == (0.4,) * 3 and data_config["std"] == (0.2,) * 3
    assert data_config["input_size"] == (3, 32, 32)
    run_dir = analyze(tmp_path, f"--model=hf:{model_dir}", f"--data={photos}")
    report = (run_dir / "attention" / "report.md").read_text()
    assert "- Model: hf:" in report
    assert "2 layers, width 32, 2 heads, patch 8x8, images 32x32" in report
    assert [row[0] for row in report_rows(report, "| class | n |")] == ["Shirt", "Boot", "Coat"]
    assert "| 32x32 (training) | 4x4 |" in report, "the sweep, by interpolate_pos_encoding"
    assert "test/acc" in read_events(run_dir).Tags()["scalars"], "id2label names every folder"
    assert run_dir.parent.name == "analyze_hf_vit", "named after the model as given"
    layers = report[report.index("## What the layers compute") :]
    assert "- The class is readable (logit-lens accuracy" in report, "its head read at each block"
    assert re.search(r"\| 1 \| \d\.\d{3} \| \d\.\d{3} \|", layers), "a number per layer"


def test_a_lit_vit_checkpoint_is_analysed_on_fashion_mnist(tmp_path, attention_run):
    fit_files = sorted(attention_run.fit_dir.iterdir())
    run_dir = analyze(
        tmp_path,
        f"--ckpt_path={attention_run.checkpoint}",
        f"--data_dir={attention_run.data_dir}",
        NO_FLOW,
    )
    report = (run_dir / "attention" / "report.md").read_text()
    assert f"- Checkpoint: `{attention_run.checkpoint}` (epoch" in report
    assert "- Data: FashionMNISTDataModule (test 160 images)" in report
    assert "Ankle boot" in report
    assert "- Probe: 3 images (seed 0)" in report, "analyze's own probe, not the fit's"
    assert sorted(attention_run.fit_dir.iterdir()) == fit_files, "the fit's folder untouched"
    (row,) = hparams_rows(tmp_path / "logs").values()
    assert row["test/acc"] == pytest.approx(read_events(run_dir).Scalars("test/acc")[-1].value)


def fashion_folder(folder: Path, data_dir: Path, labels_by_folder: dict[str, int]) -> Path:
    """Fashion-MNIST test images as PNGs in class folders of the given names, 4 per class."""
    from torchvision.datasets import FashionMNIST

    test_set = FashionMNIST(str(data_dir), train=False)
    for name, label in labels_by_folder.items():
        (folder / name).mkdir(parents=True)
        indices = (test_set.targets == label).nonzero().flatten()[:4]
        for index in indices.tolist():
            test_set[index][0].save(folder / name / f"{index}.png")
    return folder


def test_a_checkpoint_on_a_folder_is_scored_by_class_name_not_folder_order(
    tmp_path, attention_run, caplog
):
    # Folder order (alphabetical) ankle_boot, bag, t-shirt_top; the model's classes 9, 8, 0.
    labels_by_folder = {"ankle_boot": 9, "bag": 8, "t-shirt_top": 0}
    folder = fashion_folder(tmp_path / "photos", attention_run.data_dir, labels_by_folder)
    with caplog.at_level("INFO"):
        run_dir = analyze(
            tmp_path, f"--ckpt_path={attention_run.checkpoint}", f"--data={folder}", NO_FLOW
        )
    assert run_dir.parent.name == "analyze_smoke_version_0", "named after the checkpoint's run"
    module = ImageTestDataModule(
        str(folder),
        resize_config(1, attention_run.model.hparams.img_size, PIXEL_MEAN, PIXEL_STD),
        model_classes=CLASS_NAMES,
    )
    module.setup("test")
    images, labels = zip(*module.test_dataset, strict=True)
    assert sorted(set(labels)) == [0, 8, 9], "labels are the model's class indices"
    with torch.no_grad():
        predicted = attention_run.model(torch.stack(images)).argmax(dim=-1)
    expected = (predicted == torch.tensor(labels)).float().mean().item()
    logged = read_events(run_dir).Scalars("test/acc")[-1].value
    assert logged == pytest.approx(expected)
    report = (run_dir / "attention" / "report.md").read_text()
    probe_rows = report_rows(report, "| index | class | predicted |")
    assert {row[1] for row in probe_rows} <= {"Ankle boot", "Bag", "T-shirt/top"}
    assert {row[2] for row in probe_rows} <= set(CLASS_NAMES), "predictions by name"


def test_a_folder_class_the_model_does_not_name_means_no_accuracy(tmp_path, attention_run, caplog):
    labels_by_folder = {"ankle_boot": 9, "zebra": 3}
    folder = fashion_folder(tmp_path / "photos", attention_run.data_dir, labels_by_folder)
    with caplog.at_level("INFO"):
        run_dir = analyze(
            tmp_path, f"--ckpt_path={attention_run.checkpoint}", f"--data={folder}", NO_FLOW
        )
    assert "test/acc" not in read_events(run_dir).Tags()["scalars"]
    assert "No accuracy: the data's classes zebra are none of the model's" in caplog.text
    assert "--classes" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give one of --ckpt_path (a lit-vit checkpoint) and --model"),
        (["--model=vit_tiny_patch16_224", "--ckpt_path=x.ckpt"], "give one of --ckpt_path"),
        (["--model=vit_tiny_patchy16_224"], "Unknown timm model name 'vit_tiny_patchy16_224'"),
        (["--ckpt_path=missing.ckpt"], "--ckpt_path 'missing.ckpt' does not exist"),
        (
            ["--model=vit_tiny_patch16_224", "--pretrained=false", "--data=no/such/folder"],
            "--data 'no/such/folder' is neither fashion_mnist nor a folder",
        ),
        (["--model=vit_tiny_patch16_224", "--probe_sise=3"], "Did you mean 'probe_size'?"),
        (["--model=vit_tiny_patch16_224"], "or use random weights with --pretrained false"),
        (["--model=hf:no/such-model"], "--model hf:no/such-model: cannot load it"),
        (
            ["--model=vit_tiny_patch16_224", "--pretrained=false", "--classes=[a, b]"],
            "--classes names 2 classes, the model has 10 outputs",
        ),
        (
            ["--model=vit_tiny_patch16_224", "--pretrained=false", "--skip=flow,sweep"],
            "--skip 'flow,sweep': sweep is not a part of the report that can be left out",
        ),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", *args, f"--save_dir={tmp_path}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_classes_match_by_name_case_and_punctuation_aside_and_by_any_alias():
    model = [("tench", "Tinca tinca", "n01440764"), ("goldfish", "n01443537"), ("T-shirt/top",)]
    assert match_classes(["goldfish", "Tinca_tinca", "t_shirt_top", "zebra"], model) == [
        1,
        0,
        2,
        None,
    ]


def test_a_timm_imagenet_classifier_names_its_classes_readably_then_by_wordnet_id():
    import timm

    names = imagenet_names(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    assert len(names) == 1000 and names[0] == ("tench", "Tinca tinca", "n01440764")


def test_an_unreadable_or_too_large_image_is_named_with_the_fix(
    tmp_path, photos, capsys, monkeypatch
):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    command = [
        "analyze",
        *tiny_timm(folder),
        f"--save_dir={tmp_path / 'logs'}",
    ]
    (folder / "coat" / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert f"{folder / 'coat' / 'notes.png'} is no image that can be read" in error

    (folder / "coat" / "notes.png").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 1,200-pixel photos: bombs now
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert "is too large to read safely" in error and "PIL.Image.MAX_IMAGE_PIXELS" in error


def test_skip_leaves_out_flow_sanity_and_resolution_and_each_section_says_it_starts(
    tmp_path, photos, caplog
):
    caplog.set_level("INFO")
    run_dir = analyze(
        tmp_path,
        *tiny_timm(photos),
        "--skip=flow, sanity,resolution",
    )
    report = (run_dir / "attention" / "report.md").read_text()
    assert "## Sanity checks" not in report and "## Effect of input resolution" not in report
    explainers = [row[0] for row in report_rows(report, "| map |")]
    assert "flow" not in explainers and "rollout" in explainers and "cp-lrp" in explainers
    for line in ("AttentionMaps: analysing", "Faithfulness: analysing", "s per image, about"):
        assert line in caplog.text
    assert re.search(r"Faithfulness: 6 images x 9 maps: \d+ forwards and 162 ROAD", caplog.text)
    assert "explaining 12 test images once for the report (rollout, class token," in caplog.text


def test_on_a_large_grid_the_cascade_computes_flow_at_its_two_ends(tmp_path, photos, caplog):
    caplog.set_level("INFO")
    fine_grid = TINY_TIMM.replace("img_size: 32", "img_size: 36, patch_size: 4")  # 81 patches
    run_dir = analyze(
        tmp_path,
        *tiny_timm(photos, fine_grid),
        "--skip=resolution",
    )
    report = (run_dir / "attention" / "report.md").read_text()
    sanity = report[report.index("## Sanity checks") :]
    assert "On 81 patches flow costs seconds per image" in sanity
    assert "| flow |" in sanity, "still a verdict: both ends computed"
    assert re.search(r"SanityChecks: about \d+ s more", caplog.text)


def test_on_a_large_grid_the_defaults_leave_out_flow_and_score_fewer_images(
    tmp_path, photos, caplog
):
    caplog.set_level("INFO")
    fine_grid = TINY_TIMM.replace("img_size: 32", "img_size: 36, patch_size: 4")  # 81 patches
    main(
        [
            "analyze",
            *tiny_timm(photos, fine_grid),
            f"--save_dir={tmp_path / 'logs'}",
            "--probe_size=3",
            "--test_images=12",
            "--batch_size=8",
        ]
    )
    assert (
        "81 patches per image: attention flow left out and Faithfulness on the first 8 test "
        "images, to keep the report to minutes on a CPU; --skip '' --faithfulness_images 256 "
        "to analyse everything."
    ) in caplog.text
    (run_dir,) = (tmp_path / "logs").glob("analyze_*/version_*")
    report = (run_dir / "attention" / "report.md").read_text()
    assert (
        "- Explainers: rollout, class token, grad rollout, input x gradient, cp-lrp (left "
        "out: flow)" in report
    )
    assert "Seven faithfulness metrics on 8 test images" in report
    assert "| flow |" not in report and "## Sanity checks" in report
