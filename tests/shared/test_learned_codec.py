"""The learned codec: round trips, continuous rate, exact CDF indexes across processes, refusals.

Uses the shipped tiny checkpoint (``shared/codec/assets/learned-tiny.pt``: M=16, 4 gain levels, trained
on ``random:0`` features at 128 px). ``tests/assets/learned_tiny_records.json`` holds payloads encoded
when the checkpoint was made; decoding them here checks this machine's decoder against that encoder.
Regenerate it with ``GENERATE_EXPECTED=1`` after changing the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from payload_fuzz import fuzzed_payloads

from fpnlink.shared.codec import LearnedCodec, ScaleRecord, available_codecs, make_codec
from fpnlink.shared.codec.container import unpack
from fpnlink.shared.codec.gain import GainUnits
from fpnlink.shared.codec.hyperprior import SKIPPED_INDEX, FeatureHyperprior, HyperpriorConfig
from fpnlink.shared.codec.intnet import EXACT_LIMIT, bound_index
from fpnlink.shared.codec.learned import DEFAULT_CHECKPOINT, TINY_CHECKPOINT
from fpnlink.shared.errors import CodecError, WeightsError

EXPECTED = Path(__file__).resolve().parents[1] / "assets" / "learned_tiny_records.json"


@pytest.fixture(scope="module")
def codec() -> LearnedCodec:
    return LearnedCodec(TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def features(tiny_bundle) -> dict[str, torch.Tensor]:
    """P2..P5 of one 96x128 image from the random:0 backbone (P5 is 3x4: odd sizes are exercised)."""
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        maps = tiny_bundle.edge_half(["detect"])([image])[0]
    return {name: tensor.clone() for name, tensor in maps.items()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return 10 * torch.log10((a.max() - a.min()) ** 2 / mse).item()


class TestRegistry:
    def test_registered_with_default_checkpoint(self):
        assert "learned" in available_codecs()
        codec = make_codec("learned")
        assert isinstance(codec, LearnedCodec) and codec.checkpoint == DEFAULT_CHECKPOINT
        assert not codec.lossless and codec.phi_range == (0.0, 4.0)  # the shipped model has 5 gain levels

    def test_fingerprint_is_stable_and_tracks_weights(self, codec, tmp_path):
        assert LearnedCodec(TINY_CHECKPOINT).fingerprint == codec.fingerprint
        blob = torch.load(TINY_CHECKPOINT, weights_only=True)
        blob["state_dict"]["branches.0.g_s.0.bias"] = blob["state_dict"]["branches.0.g_s.0.bias"] + 1e-3
        torch.save(blob, tmp_path / "other.pt")
        assert LearnedCodec(tmp_path / "other.pt").fingerprint != codec.fingerprint

    def test_missing_checkpoint(self, tmp_path):
        with pytest.raises(WeightsError, match="no learned-codec checkpoint"):
            LearnedCodec(tmp_path / "absent.pt")

    def test_checkpoint_without_tables(self, tmp_path):
        torch.save(FeatureHyperprior(HyperpriorConfig(latent=8, hyper=4, hidden=4, num_gains=2)).checkpoint(),
                   tmp_path / "raw.pt")
        with pytest.raises(WeightsError, match="frozen"):
            LearnedCodec(tmp_path / "raw.pt")

    def test_not_a_checkpoint(self, tmp_path):
        torch.save({"format": "something else"}, tmp_path / "bad.pt")
        with pytest.raises(WeightsError):
            LearnedCodec(tmp_path / "bad.pt")


class TestRoundTrip:
    def test_backbone_features(self, codec, features):
        records = codec.encode(features, dict.fromkeys(features, 3.0))
        decoded = codec.decode(records)
        for name, tensor in features.items():
            assert decoded[name].shape == tensor.shape and decoded[name].dtype == torch.float32
            assert _psnr(tensor, decoded[name]) > 20

    @pytest.mark.parametrize("height, width", [(1, 1), (3, 4), (5, 7), (25, 38)])
    def test_odd_sizes(self, codec, height, width):
        tensor = torch.randn(1, 256, height, width, generator=torch.Generator().manual_seed(height))
        records = codec.encode({"3": tensor})
        assert records[0].shape == (256, height, width)
        assert codec.decode(records)["3"].shape == (1, 256, height, width)

    def test_batch_encoding(self, codec, features):
        batch = {name: tensor.repeat(4, 1, 1, 1) for name, tensor in features.items()}
        frames = codec.encode_batch(batch, dict.fromkeys(batch, 1.5))
        assert len(frames) == 4 and all(len(frame) == 4 for frame in frames)
        for frame in frames:
            assert {n: t.shape for n, t in codec.decode(frame).items()} == {n: t.shape for n, t in features.items()}

    def test_rate_falls_with_phi(self, codec, features):
        phis = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0]
        sizes = [sum(len(r.payload) for r in codec.encode(features, dict.fromkeys(features, phi))) for phi in phis]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1.5 * sizes[-1], sizes

    def test_phi_travels_per_scale(self, codec, features):
        phi = {"0": 0.25, "1": 1.0, "2": 2.75, "3": 3.0}
        records = codec.encode(features, phi)
        assert {r.name: r.phi for r in records} == phi
        codec.decode(records)

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_non_finite_features_refused(self, codec, value):
        tensor = torch.zeros(1, 256, 9, 9)
        tensor[0, 3, 8, 8] = value  # a corner: the check runs on the latent, which every input reaches
        with pytest.raises(ValueError, match="NaN or infinity"):
            codec.encode({"1": tensor})

    def test_phi_out_of_range(self, codec, features):
        with pytest.raises(ValueError, match="phi"):
            codec.encode(features, {"0": 3.5})

    def test_scale_name_required(self, codec, features):
        with pytest.raises(ValueError, match="scales"):
            codec.encode({"pool": features["3"]})
        with pytest.raises(ValueError, match="name="):
            codec.encode_scale(features["3"][0], 1.0)
        assert codec.encode_scale(features["3"][0], 1.0, name="3")[:4] == b"FPNC"


class TestDeterminism:
    def test_cross_process_cross_thread(self, features):
        from fpnlink.tools.codec.crosscheck import cross_process_check

        result = cross_process_check(TINY_CHECKPOINT, features, 2.0, threads=(1, 2))
        assert result["symbols_identical"], result  # bit-identical latents and CDF indexes
        assert result["deterministic"], result  # reconstructions equal up to float32 rounding

    def test_batch_of_one_vs_four_same_indexes(self, codec):
        z = torch.randint(-6, 7, (4, codec.model.config.hyper, 5, 7), generator=torch.Generator().manual_seed(0))
        together = codec.model.branch(2).h_s.indexes(z)
        alone = torch.cat([codec.model.branch(2).h_s.indexes(z[i:i + 1]) for i in range(4)])
        assert torch.equal(together, alone)

    def test_indexes_independent_of_threads(self, codec):
        z = torch.randint(-20, 21, (2, codec.model.config.hyper, 9, 11), generator=torch.Generator().manual_seed(1))
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = codec.model.branch(2).h_s.indexes(z)
            torch.set_num_threads(2)
            two = codec.model.branch(2).h_s.indexes(z.contiguous(memory_format=torch.channels_last))
        finally:
            torch.set_num_threads(previous)
        assert torch.equal(one, two)

    def test_integer_network_stays_exact(self, codec):
        assert max(b.h_s.exact_bound() for b in codec.model.branches) < EXACT_LIMIT / 1e6

    def test_training_path_matches_coding_path(self, codec):
        z = torch.randint(-8, 9, (2, codec.model.config.hyper, 6, 6), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            float_index = codec.model.branch(2).h_s(z.float())
        agree = (float_index == codec.model.branch(2).h_s.indexes(z).float()).float().mean().item()
        assert agree > 0.999

    def test_golden_payloads_decode(self, codec, features):
        if os.environ.get("GENERATE_EXPECTED"):
            records = codec.encode(features, dict.fromkeys(features, 1.5))
            EXPECTED.parent.mkdir(parents=True, exist_ok=True)
            EXPECTED.write_text(json.dumps({
                "fingerprint": codec.fingerprint,
                "records": [{**dataclasses.asdict(r), "payload": r.payload.hex()} for r in records],
            }, indent=1) + "\n")
        expected = json.loads(EXPECTED.read_text())
        assert expected["fingerprint"] == codec.fingerprint, "shipped checkpoint changed: GENERATE_EXPECTED=1"
        records = [ScaleRecord(r["name"], tuple(r["shape"]), r["dtype"], r["phi"], bytes.fromhex(r["payload"]))
                   for r in expected["records"]]
        decoded = codec.decode(records)  # the per-substream symbol CRCs are verified inside
        assert {n: tuple(t.shape[1:]) for n, t in decoded.items()} == {r.name: r.shape for r in records}


class TestSkippedSymbols:
    """y symbols whose index is the smallest scale are sent as zero and left out of the y string."""

    def test_skipped_symbols_are_zero_and_the_rest_round_trip(self, codec):
        x = torch.randn(1, 256, 24, 24, generator=torch.Generator().manual_seed(3))
        (record,) = codec.encode({"2": x}, {"2": 0.0})
        decoded = codec.entropy_decode(record)  # the symbol CRCs of the encoder are checked inside
        skipped = decoded["indexes"] == SKIPPED_INDEX
        assert 0 < skipped.sum() < skipped.numel()
        assert not decoded["y_symbols"][skipped].any() and decoded["y_symbols"][~skipped].any()

    def test_a_map_whose_every_symbol_is_skipped(self, codec):
        starved = copy.deepcopy(codec)
        starved.model.branch(3).h_s.layers[-1].bias.data.fill_(-50.0)  # every index at the bottom of the table
        (record,) = starved.encode({"3": torch.randn(1, 256, 6, 6, generator=torch.Generator().manual_seed(4))},
                                   {"3": 2.0})
        _, streams = unpack(record.payload, codec=starved.name, fingerprint=starved.fingerprint)
        decoded = starved.entropy_decode(record)
        assert (decoded["indexes"] == SKIPPED_INDEX).all() and not decoded["y_symbols"].any()
        assert len(streams[1]) <= 16


class TestRefusals:
    @pytest.fixture(scope="class")
    def record(self, codec, features) -> ScaleRecord:
        return codec.encode({"2": features["2"]}, {"2": 2.0})[0]

    def test_record_and_header_disagree(self, codec, record):
        for change in ({"phi": 1.0}, {"shape": (256, 6, 9)}, {"name": "1"}):
            with pytest.raises(CodecError, match="disagrees"):
                codec.decode([dataclasses.replace(record, **change)])

    def test_other_fingerprint(self, codec, record, tmp_path):
        blob = torch.load(TINY_CHECKPOINT, weights_only=True)
        blob["state_dict"]["branches.0.g_s.0.bias"] = blob["state_dict"]["branches.0.g_s.0.bias"] + 1e-3
        torch.save(blob, tmp_path / "other.pt")
        with pytest.raises(CodecError, match="fingerprint"):
            LearnedCodec(tmp_path / "other.pt").decode([record])

    def test_fuzzed_payloads(self, codec, record):
        """Truncations, bit flips, forged headers (CRC recomputed) and random bytes: CodecError only."""
        _, streams = unpack(record.payload, codec=codec.name, fingerprint=codec.fingerprint)
        for case in fuzzed_payloads(record.payload, sum(len(s) for s in streams)):
            with pytest.raises(CodecError):
                codec.decode([dataclasses.replace(record, payload=case)])


class TestComponents:
    def test_gains_monotonic_and_interpolated(self):
        gains = GainUnits(num_scales=2, num_gains=4, channels=3)
        with torch.no_grad():
            gains.raw_steps.normal_()
        table = gains.log_gains()
        assert (table.diff(dim=1) >= 0).all()
        scale = torch.tensor([1, 1, 1])
        gain, _ = gains(scale, torch.tensor([1.0, 1.5, 2.0]))
        assert torch.allclose(gain[0, :, 0, 0], table[1, 1].exp()) and torch.allclose(gain[2, :, 0, 0], table[1, 2].exp())
        assert torch.allclose(gain[1, :, 0, 0], (gain[0] * gain[2]).sqrt()[:, 0, 0])

    def test_coding_refused_before_update(self):
        model = FeatureHyperprior(HyperpriorConfig(latent=8, hyper=4, hidden=4, num_gains=2)).eval()
        with pytest.raises(RuntimeError, match="update"):
            model.compress(torch.randn(1, 256, 4, 4), 0, 0.0)

    def test_per_scale_model_wants_one_scale_per_batch(self):
        model = FeatureHyperprior(HyperpriorConfig(latent=8, hyper=4, hidden=4, num_gains=2))
        assert len(model.branches) == 4 and model.branch(3) is model.branches[3]
        with pytest.raises(ValueError, match="one scale"):
            model(torch.randn(2, 256, 8, 8), torch.tensor([0, 3]), torch.tensor([0.0, 1.0]))

    def test_forward_keys(self):
        model = FeatureHyperprior(HyperpriorConfig(latent=8, hyper=4, hidden=4, num_gains=2, per_scale=False))
        assert len(model.branches) == 1 and model.branch(3) is model.branches[0]
        out = model(torch.randn(2, 256, 8, 8), torch.tensor([0, 3]), torch.tensor([0.0, 1.0]))
        assert set(out) == {"x_hat", "x_norm", "x_hat_norm", "likelihoods", "bits"}
        assert out["x_hat"].shape == (2, 256, 8, 8) and out["bits"].shape == (2,)
        out["bits"].sum().backward()
        assert model.branch(0).h_s.layers[0].weight.grad is not None and model.gains.raw_steps.grad is not None

    def test_index_gradient_leads_back_into_the_table(self):
        x = torch.tensor([-5.0, 3.2, 70.0], requires_grad=True)
        index = bound_index(x, levels=64)
        assert index.tolist() == pytest.approx([0.0, 3.2, 63.0])
        index.sum().backward()  # descent lowers every index: allowed only where it stays in (or re-enters) range
        assert x.grad.tolist() == [0.0, 1.0, 1.0]
        x.grad = None
        (-bound_index(x, levels=64).sum()).backward()  # descent raises every index
        assert x.grad.tolist() == [-1.0, -1.0, 0.0]

    def test_hyper_gains_scale_the_coded_hyper_latent(self):
        config = HyperpriorConfig(latent=8, hyper=4, hidden=4, num_gains=3, hyper_gains=True)
        scaled = FeatureHyperprior(config)
        plain = FeatureHyperprior(dataclasses.replace(config, hyper_gains=False))
        plain.load_state_dict({k: v for k, v in scaled.state_dict().items() if not k.startswith("hyper_gains.")})
        for model in (scaled, plain):
            model.update()
            model.eval()
        x = 20 * torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(0))
        top = float(config.num_gains - 1)
        z_scaled = scaled.compress(x, 0, top)["z_symbols"].abs().sum()
        assert z_scaled < plain.compress(x, 0, top)["z_symbols"].abs().sum()
        assert torch.equal(scaled.compress(x, 0, 0.0)["z_symbols"], plain.compress(x, 0, 0.0)["z_symbols"])
        assert scaled.decompress(scaled.compress(x, 0, top)["strings"], (16, 16), 0, top)["x_hat"].shape == x.shape
