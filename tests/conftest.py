from pathlib import Path

import pytest

from monitor.defects import DefectConfig
from monitor.model import Model
from monitor.scorers import PatchDictionaryConfig
from monitor.synth import defective_image, fiber_mat
from monitor.threshold import ThresholdConfig

ROOT = Path(__file__).resolve().parent.parent
NANOTWICE = ROOT.parent / "shared" / "data" / "nanotwice"
SHAPE = (256, 320)

# small and fast, same code path as the default: real pretrained weights, dense mode. 3x3 aggregation as in the
# demo: on the synthetic mats it separates defects from clean images far better than the NanoTWICE default's none
# (bench: median defect/clean coverage ratio 87 vs 7.7), while on real SEM images none is better (README)
SMALL = PatchDictionaryConfig(k=512, aggregate=3)


@pytest.fixture(scope="session")
def normal_images():
    return [fiber_mat(SHAPE, seed=i) for i in range(8)]


@pytest.fixture(scope="session")
def val_images():
    return [fiber_mat(SHAPE, seed=100 + i) for i in range(2)]


@pytest.fixture(scope="session")
def fitted_model(normal_images, val_images):
    return Model.fit("patch_dictionary", SMALL, normal_images, val_images, ThresholdConfig(), DefectConfig(),
                     device="cpu")


@pytest.fixture(scope="session")
def saved_model(fitted_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "m"
    fitted_model.save(d)
    return d


@pytest.fixture
def defect_sample():
    return defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=7)

