"""A latent codec that records the final latents a sampler asks it to decode, for tests that
compare samplers on their final latents."""
from realiz3d.sampling.runtime import LatentCodec, runtime_from_pipeline


class Capture(LatentCodec):
    """Wraps a codec; ``decoded`` holds a copy of every latent batch decoded, in order."""

    def __init__(self, inner):
        self.inner, self.channels, self.can_sample, self.decoded = inner, inner.channels, inner.can_sample, []

    def encode(self, images, generator, mode):
        return self.inner.encode(images, generator, mode)

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return self.inner.decode(latents)


def capture_runtime(pipe):
    """The runtime of a diffusers FluxPipeline with a capturing codec."""
    rt = runtime_from_pipeline(pipe)
    rt.codec = Capture(rt.codec)
    return rt
