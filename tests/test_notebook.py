"""notebooks/colab.ipynb, executed cell by cell with nbclient as Colab would, on a tiny synthetic dataset.

The notebook's parameters cell (tag ``parameters``) is followed by a cell with this test's values, as papermill
injects parameters; the cells tagged ``colab-only`` (mounting Google Drive, downloading ImageNet weights) are
the only ones left out. The dataset is a zip laid out like the official Market-1501 archive (one top folder
holding bounding_box_train/, bounding_box_test/ and query/), trained on with ``-d market``.
"""
import json
import os
import shutil

import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab.ipynb")
ARCHIVE_FOLDER = "Market-1501-v15.09.15"
ABLATION_ROWS = ("baseline", "dsa", "ds", "full")


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def _read_notebook():
    with open(NOTEBOOK, encoding="utf-8") as handle:
        notebook = nbformat.read(handle, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _with_parameters(notebook, parameters):
    """The notebook without its colab-only cells, with ``parameters`` assigned right after its parameters cell."""
    cells = [cell for cell in notebook.cells if "colab-only" not in _tags(cell)]
    position = next(i for i, cell in enumerate(cells) if "parameters" in _tags(cell))
    assignments = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cells.insert(position + 1, nbformat.v4.new_code_cell(assignments))
    notebook.cells = cells
    return notebook


def _execute(notebook, workdir):
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))


def _market_zip(dataset_root, tmp_path):
    """A zip of the tiny dataset in the official archive's shape: ``Market-1501-v15.09.15/<three folders>``."""
    staging = tmp_path / "staging"
    shutil.copytree(dataset_root, staging / ARCHIVE_FOLDER)
    return shutil.make_archive(str(tmp_path / ARCHIVE_FOLDER), "zip", root_dir=staging, base_dir=ARCHIVE_FOLDER)


def test_the_notebook_tags_its_parameters_and_its_colab_only_cells():
    notebook = _read_notebook()
    parameters = [cell for cell in notebook.cells if "parameters" in _tags(cell)]
    colab_only = [cell.source for cell in notebook.cells if "colab-only" in _tags(cell)]
    assert len(parameters) == 1
    assert len(colab_only) == 2
    assert any("drive.mount" in source for source in colab_only)
    assert any("IMAGENET1K_V1" in source for source in colab_only)


@pytest.mark.slow
def test_the_notebook_trains_resumes_runs_the_ablation_and_writes_its_table(tiny_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    logs = tmp_path / "drive" / "dsp-logs"
    parameters = dict(
        REPO_URL="unused: the code is already in CODE_DIR", CODE_DIR=REPO,
        DATASET_ZIP=_market_zip(tiny_synthetic, tmp_path), DATA_ROOT=str(tmp_path / "content-data"),
        DATASET="market", DATA_DIR=str(tmp_path / "content-data" / ARCHIVE_FOLDER), LOGS_DIR=str(logs),
        ARCH="resnet18",
        TRAIN_ARGS="-b 16 -j 0 --epochs 1 --combine-trainval --height 96 --width 32 --features 32 --no-pretrained",
        RUN_ABLATION=True)
    output = _execute(_with_parameters(_read_notebook(), parameters), tmp_path)

    assert os.path.isdir(os.path.join(parameters["DATA_DIR"], "bounding_box_train"))
    with open(logs / "market" / "results.json") as handle:
        assert json.load(handle)["dataset"] == "market"
    for row in ABLATION_ROWS:
        assert (logs / "ablation-market" / row / "results.json").is_file(), output
    table = (logs / "ablation-market" / "table.md").read_text()
    assert all(f"| {row}" in table for row in ABLATION_ROWS), table

    # A disconnected session: run it all again; finished runs are skipped and unfinished ones resumed.
    (logs / "market" / "results.json").unlink()
    (logs / "ablation-market" / "full" / "results.json").unlink()
    output = _execute(_with_parameters(_read_notebook(), parameters), tmp_path)
    assert f"--resume {logs / 'market' / 'checkpoint.pth.tar'}" in output
    assert f"--resume {logs / 'ablation-market' / 'full' / 'checkpoint.pth.tar'}" in output
    for row in ("baseline", "dsa", "ds"):
        assert f"{logs / 'ablation-market' / row} has finished (results.json exists): skipped" in output
    assert (logs / "market" / "results.json").is_file()
    assert (logs / "ablation-market" / "full" / "results.json").is_file()
