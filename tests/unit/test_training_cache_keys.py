"""The disk cache of encoded captions and latents is keyed by the encoders' weights too: a run
with other text encoders or another VAE encodes again instead of reading another encoder's entries."""
import torch

from realiz3d.training.backbone import Backbone
from realiz3d.training.encode import DiskCache, LatentCache, TextCache, fingerprint


class FakeBackbone(Backbone):
    """Encoders that return their ``value`` everywhere (what was read tells which encoder made it)."""
    add_lora = load_lora = save_lora = base_module = None

    def __init__(self, text_id, vae_id, value):
        self.text_id, self.vae_id, self.value, self.device = text_id, vae_id, value, torch.device("cpu")

    def encode_text(self, caption, max_len):
        return torch.full((4, 8), self.value), torch.full((3,), self.value)

    def encode_images(self, images):
        return torch.full((1, 4, 64), self.value), torch.zeros(1, 4, 64), (4, 4)


def test_other_encoders_never_read_cached_entries(tmp_path):
    disk = DiskCache(str(tmp_path), 1 << 20)
    images = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    results = {}
    for text_id, vae_id, value in (("t1", "v1", 1.0), ("t2", "v1", 2.0), ("t1", "v2", 3.0), ("t1", "v1", 9.0)):
        bb = FakeBackbone(text_id, vae_id, value)
        text, lat = TextCache(bb, "cpu", 8, 4, disk), LatentCache(bb, "cpu", True, 1 << 20, disk)
        e, _, _ = text.get(["a box"], torch.float32)
        mean, _, _ = lat.dist("s0", images)
        results[(text_id, vae_id, value)] = (float(e.max()), float(mean.max()), text.encoded, lat.encoded)
    assert results[("t1", "v1", 1.0)] == (1.0, 1.0, 1, 1)
    assert results[("t2", "v1", 2.0)] == (2.0, 1.0, 1, 0)          # other text encoders: encoded again
    assert results[("t1", "v2", 3.0)] == (1.0, 3.0, 0, 1)          # another VAE: encoded again
    assert results[("t1", "v1", 9.0)] == (1.0, 1.0, 0, 0)          # the same encoders: read from disk


def test_fingerprint_names_the_weights():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.weight[0, 0] += 1.0
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a.half()) != fingerprint(b.float()) and fingerprint(None) == fingerprint()
