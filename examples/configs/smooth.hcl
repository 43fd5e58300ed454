# The demo pipeline with a third-party phase between the transformer and
# the decoder: smooth (examples/phases), latent temporal smoothing. Build
# it into the plugin directory first, from the repository root:
#   (cd examples/phases && go build -o ../../bin/plugins/ ./cmd/phased-phase-smooth)
#   bin/supervisor run --config examples/configs/smooth.hcl --prompt "a red fox"
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin = "transformer"
}

phase "smooth" {
  plugin = "smooth"
  params = {
    strength = "0.5"
  }
}

phase "decoder" {
  plugin = "decoder"
}
