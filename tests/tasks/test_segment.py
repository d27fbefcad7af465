"""The segmentation predictor: multi-scale, flipped inference fused three ways, checked against a direct computation
on a synthetic Vistas-format checkpoint loaded through the registry."""

from __future__ import annotations

import io
import weakref
from array import array

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from support.numerics import FLOAT64_TOL, assert_as_close_as_standard, assert_same_function, noise_floor
from support.segmentation_fixtures import TINY_LONG_SIDE, TINY_WEIGHTS, served_tiny_vistas

import iabn_zoo as zoo
import iabn_zoo.tasks.segment as seg_predict
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.tasks.segment import SegmentationPredictor, check_scales, parse_scales, resized_bands

SCALES = (0.7, 1.0, 1.2)
# Pixels whose decision is a near tie (within float32 rounding of the two computations) may legitimately differ;
# the tests check that this margin is far above the float32 noise they measure.
TIE = 1e-5


@pytest.fixture(scope="module")
def tiny_model(module_tmp):
    """The synthetic Vistas-format checkpoint, downloaded from loopback, verified and loaded via create_model."""
    folder = module_tmp("tiny_vistas")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IABN_ZOO_HOME", str(folder / "home"))
        with served_tiny_vistas(folder) as weights:
            model = zoo.create_model(weights.name, pretrained=True, progress=False)
    return model.eval(), weights


@pytest.fixture
def batch():
    """Two normalised images of 45 x 58 pixels (0.7 * 45 and 1.2 * 58 round up) with structure at several sizes."""
    generator = torch.Generator().manual_seed(3)
    coarse = F.interpolate(torch.randn(2, 3, 5, 7, generator=generator), size=(45, 58), mode="bilinear")
    return coarse + 0.3 * torch.randn(2, 3, 45, 58, generator=generator)


def pass_probabilities(model: nn.Module, x: torch.Tensor, scales, flip: bool, dtype=torch.float32) -> torch.Tensor:
    """(passes, N, C, H, W) softmax of each pass, computed the plain way: resize, run, resize back, unflip; the
    network runs in float32 (as the predictor runs it), what follows its logits in `dtype`."""
    height, width = x.shape[-2:]
    stack = []
    with torch.no_grad():
        for scale in scales:
            for flipped in ((False, True) if flip else (False,)):
                image = x.flip(-1) if flipped else x
                if scale != 1:
                    image = F.interpolate(image, size=[round(scale * height), round(scale * width)],
                                          mode="bilinear", align_corners=False)
                logits = F.interpolate(model(image).to(dtype), size=(height, width), mode="bilinear",
                                       align_corners=False)
                stack.append((logits.flip(-1) if flipped else logits).softmax(dim=1))
    return torch.stack(stack)


def top2_gap(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Difference between the largest and second largest value along `dim`."""
    top = values.topk(2, dim=dim).values
    return top.select(dim, 0) - top.select(dim, 1)


def direct_fusion(probs: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(confidence, classes, near-tie mask) of the fused passes, from the whole stack at once."""
    pass_best, pass_class = probs.max(dim=2)
    ties = (top2_gap(probs, dim=2) < TIE).any(dim=0)
    if mode == "mean":
        confidence, classes = probs.mean(dim=0).max(dim=1)
        return confidence, classes, ties | (top2_gap(probs.mean(dim=0), dim=1) < TIE)
    if mode == "max":
        winner = pass_best.argmax(dim=0, keepdim=True)
        best_two = pass_best.topk(2, dim=0)
        rival_classes = pass_class.gather(0, best_two.indices)
        ties |= (best_two.values[0] - best_two.values[1] < TIE) & (rival_classes[0] != rival_classes[1])
        return pass_best.gather(0, winner)[0], pass_class.gather(0, winner)[0], ties
    votes = F.one_hot(pass_class, probs.shape[2]).sum(dim=0)  # (N, H, W, C)
    classes = votes.argmax(dim=-1)
    voters = pass_class == classes
    return (pass_best * voters).sum(dim=0) / voters.sum(dim=0), classes, ties


@pytest.mark.parametrize("mode", ["mean", "voting", "max"])
def test_fused_output_equals_direct_computation(tiny_model, batch, mode):
    model, _ = tiny_model
    predictor = SegmentationPredictor(model, mean=(0, 0, 0), std=(1, 1, 1), scales=SCALES, flip=True, fusion=mode)
    confidence, classes = predictor.fuse(batch)
    expected_confidence, expected_classes, ties = direct_fusion(pass_probabilities(model, batch, SCALES, True), mode)
    reference_confidence, _, _ = direct_fusion(pass_probabilities(model, batch, SCALES, True, torch.float64), mode)
    assert classes.shape == confidence.shape == (2, 45, 58)
    assert ties.float().mean() < 0.01
    decided = ~ties
    assert torch.equal(classes[decided], expected_classes[decided]), (
        f"{int((classes != expected_classes)[decided].sum())} decided pixel(s) get another class")
    # the predictor is float32 by design: as close to the float64 fusion as the direct float32 fusion is
    assert_as_close_as_standard(confidence[decided], expected_confidence[decided], reference_confidence[decided],
                                "fused confidence")
    # two float32 computations, each off by the floor, move a gap between two probabilities by at most 4 x floor
    floor = noise_floor(expected_confidence, reference_confidence)
    assert 4 * floor < TIE, f"the near-tie margin {TIE:g} is within 4 x the float32 noise {floor:.3g}"
    assert expected_classes.unique().numel() >= 3  # the check is not a trivial one-class map


def test_fusion_modes_disagree_somewhere(tiny_model, batch):
    """The three modes are different rules: on the same passes at least two of them differ."""
    model, _ = tiny_model
    outputs = [SegmentationPredictor(model, mean=(0, 0, 0), std=(1, 1, 1), scales=SCALES, flip=True,
                                     fusion=mode).fuse(batch) for mode in ("mean", "voting", "max")]
    (mean_confidence, mean_classes), (_, voting_classes), (max_confidence, max_classes) = outputs
    assert not torch.equal(mean_classes, max_classes) or not torch.equal(mean_classes, voting_classes)
    # the best single pass is at least the mean (up to 8 float32 ulps of a probability, the mean's rounding)
    shortfall = float((mean_confidence - max_confidence).max())
    assert shortfall <= 1e-6, f"the max fusion's confidence is below the mean's by up to {shortfall:.3g}"
    excess = float((max_confidence - mean_confidence).max())
    assert excess > 1e-3, f"the max fusion's confidence never exceeds the mean's by more than {excess:.3g}"


def test_single_pass_is_softmax_of_resized_logits(tiny_model, batch):
    model, _ = tiny_model
    confidence, classes = SegmentationPredictor(model, mean=(0, 0, 0), std=(1, 1, 1)).fuse(batch)
    probs = pass_probabilities(model, batch, (1.0,), False)[0]
    reference = pass_probabilities(model, batch, (1.0,), False, torch.float64)[0]
    assert_as_close_as_standard(confidence, probs.max(dim=1).values, reference.max(dim=1).values, "confidence")


def test_predict_preprocesses_like_the_authors_and_answers_at_input_size(tiny_model):
    model, weights = tiny_model
    generator = torch.Generator().manual_seed(5)
    pixels = (torch.rand(50, 90, 3, generator=generator) * 255).to(torch.uint8)
    image = Image.frombytes("RGB", (90, 50), bytes(pixels.flatten().tolist()))
    prep = weights.preprocessing
    predictor = SegmentationPredictor(model, mean=prep["mean"], std=prep["std"], long_side=TINY_LONG_SIDE,
                                      scales=(1.0, 1.2), fusion="max")
    # longest side to 64 with Pillow's bilinear filter: int(90 * 64/90) x int(50 * 64/90) = 64 x 35
    resized = image.resize((64, 35), Image.BILINEAR)
    manual = torch.tensor(list(resized.tobytes()), dtype=torch.float32).view(35, 64, 3).permute(2, 0, 1) / 255
    manual = (manual - torch.tensor(prep["mean"]).view(3, 1, 1)) / torch.tensor(prep["std"]).view(3, 1, 1)
    x = predictor.preprocess(image)
    torch.testing.assert_close(x, manual[None])
    result = predictor.predict(image)
    assert result.size == (90, 50) and result.classes.dtype == torch.int64
    confidence, classes = predictor.fuse(x)
    # back to the input's size as the authors' script did, with PIL's NEAREST: resize a map of source positions
    index_map = Image.frombytes("I", (64, 35), array("i", range(35 * 64)).tobytes())
    sources = torch.frombuffer(bytearray(index_map.resize((90, 50), Image.NEAREST).tobytes()), dtype=torch.int32)
    sources = sources.long()
    assert torch.equal(result.classes, classes[0].flatten()[sources].view(50, 90))
    assert torch.equal(result.confidence, confidence[0].flatten()[sources].view(50, 90))


def test_from_weights_takes_preprocessing_from_the_registry(tiny_model, tmp_path):
    _, weights = tiny_model
    with served_tiny_vistas(tmp_path) as served:
        predictor = SegmentationPredictor.from_weights(served.name, progress=False, scales=(1,), flip=True)
    assert predictor.long_side == TINY_LONG_SIDE
    assert predictor.mean == tuple(weights.preprocessing["mean"])
    assert predictor.flip and predictor.passes() == [(1.0, False), (1.0, True)]
    assert not predictor.model.training


def test_from_weights_refuses_classification_weights():
    with pytest.raises(InvalidArgumentError, match="classification"):
        SegmentationPredictor.from_weights("resnext101_ipabn_lr_512")


class RecordingNet(nn.Module):
    """Wraps a network and checks, at each call, that the logits it returned before have been freed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs: list[weakref.ref] = []
        self.alive_at_call: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_at_call.append(sum(ref() is not None for ref in self.outputs))
        logits = self.model(x)
        self.outputs.append(weakref.ref(logits))
        return logits


@pytest.mark.parametrize("mode", ["mean", "voting", "max"])
def test_passes_are_fused_one_at_a_time(tiny_model, batch, mode):
    model, _ = tiny_model
    recording = RecordingNet(model)
    SegmentationPredictor(recording, mean=(0, 0, 0), std=(1, 1, 1), scales=SCALES, flip=True, fusion=mode).fuse(batch)
    assert recording.alive_at_call == [0] * 6


def test_banded_resizing_equals_interpolate(monkeypatch):
    monkeypatch.setattr(seg_predict, "BAND_ELEMENTS", 100)  # many bands of a few rows
    generator = torch.Generator().manual_seed(0)
    for low, high in [((5, 7), (40, 56)), ((9, 6), (61, 50)), ((6, 8), (4, 5)), ((1, 1), (3, 3))]:
        logits = torch.randn(2, 5, *low, generator=generator)
        bands = list(resized_bands(logits, high))
        assert len(bands) > 1 or high[0] == 3
        assert [rows.start for rows, _ in bands] == sorted({rows.start for rows, _ in bands})
        expected = F.interpolate(logits, size=high, mode="bilinear", align_corners=False)
        expected64 = F.interpolate(logits.double(), size=high, mode="bilinear", align_corners=False)
        ours64 = torch.cat([band for _, band in resized_bands(logits.double(), high)], dim=2)
        # the same function in float64, up to the row weights, which `bilinear_taps` rounds to float32 (~1e-7)
        assert_same_function(ours64, expected64, f"float64 bands {low} -> {high}", FLOAT64_TOL)
        assert_as_close_as_standard(torch.cat([band for _, band in bands], dim=2), expected, expected64,
                                    f"float32 bands {low} -> {high}")


@pytest.mark.parametrize("scales", [(0,), (1, -0.5), (float("nan"),), (float("inf"),), ()])
def test_bad_scales_are_refused(tiny_model, scales):
    model, _ = tiny_model
    with pytest.raises(InvalidArgumentError, match="scale"):
        SegmentationPredictor(model, mean=(0, 0, 0), std=(1, 1, 1), scales=scales)


def test_scales_parse_from_text():
    assert parse_scales("0.7,1,1.2") == (0.7, 1.0, 1.2)
    assert parse_scales("[0.7, 1, 1.2]") == (0.7, 1.0, 1.2)
    assert check_scales([2]) == (2.0,)
    for text in ("0.7,,x", "0,1", "-1", ""):
        with pytest.raises(InvalidArgumentError):
            parse_scales(text)


@pytest.mark.parametrize("options, message", [
    ({"fusion": "median"}, "fusion"),
    ({"long_side": 0}, "long_side"),
    ({"std": (1, 0, 1)}, "std"),
    ({"interpolation": "lanczos9"}, "interpolation"),
])
def test_bad_options_are_refused(tiny_model, options, message):
    model, _ = tiny_model
    settings = {"mean": (0, 0, 0), "std": (1, 1, 1), **options}
    with pytest.raises(InvalidArgumentError, match=message):
        SegmentationPredictor(model, **settings)


def test_bad_batch_shape_is_refused(tiny_model):
    model, _ = tiny_model
    predictor = SegmentationPredictor(model, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(InvalidArgumentError, match=r"\(N, 3, H, W\)"):
        predictor.fuse(torch.zeros(3, 32, 32))


def test_the_vistas_network_runs_through_the_predictor():
    """The real architecture (random weights, no download) fits the predictor's call contract: one small pass."""
    torch.manual_seed(0)
    network = zoo.create_model("wider_resnet38_a2_deeplab3")
    vistas = zoo.get_weights("wider_resnet38_deeplab3_vistas")
    predictor = SegmentationPredictor(network, mean=vistas.preprocessing["mean"], std=vistas.preprocessing["std"],
                                      long_side=48)
    image = Image.new("RGB", (72, 54), (90, 120, 200))
    result = predictor.predict(image)
    assert result.size == (72, 54)
    assert 0 <= int(result.classes.min()) and int(result.classes.max()) < 65
    lowest = float(result.confidence.min())  # the largest of 65 probabilities: at least their mean, 1/65
    assert lowest > 1 / 65 - 1e-6, f"a confidence of {lowest:.9g} is below 1/65 by more than float32 rounding"



def test_tiny_network_is_registered_only_while_served(tiny_model):
    """Other test modules never see the miniature network or its weights."""
    from iabn_zoo.models._registry import is_arch

    assert not is_arch("tiny_vistas_deeplab3") and not zoo.list_weights(TINY_WEIGHTS)


@pytest.mark.parametrize("source, target", [((120, 160), (73, 97)), ((120, 160), (225, 300)), ((37, 5), (36, 11)),
                                            ((1, 7), (3, 2))])
def test_nearest_resize_picks_the_pixels_pillow_picks(source, target):
    from iabn_zoo.tasks.segment import resize_nearest

    (h, w), (th, tw) = source, target
    values = torch.arange(h * w, dtype=torch.int32).view(h, w)
    picture = Image.frombytes("I", (w, h), array("i", range(h * w)).tobytes()).resize((tw, th), Image.NEAREST)
    expected = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.int32).view(th, tw)
    assert torch.equal(resize_nearest(values, target), expected)


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_large_image_gets_a_bar_over_its_passes_and_a_small_one_none(tiny_model, monkeypatch):
    model, weights = tiny_model
    predictor = SegmentationPredictor(model, mean=weights.preprocessing["mean"], std=weights.preprocessing["std"],
                                      long_side=None, scales=(0.5, 1), flip=True)
    photo = Image.new("RGB", (40, 30), (90, 120, 30))
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    predictor.predict(photo, progress=True)
    assert terminal.getvalue() == ""  # 1200 pixels: over before a bar would say anything
    monkeypatch.setattr(seg_predict, "PASS_BAR_PIXELS", 1000)
    predictor.predict(photo, progress=True)
    assert "passes" in terminal.getvalue() and "/4" in terminal.getvalue()  # two scales, each flipped
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    predictor.predict(photo)
    assert quiet.getvalue() == ""
