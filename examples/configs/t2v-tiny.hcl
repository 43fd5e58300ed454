# The tiny text-to-video model of examples/t2v-tiny: a text encoder, a DiT
# denoiser sampled with DDIM and classifier-free guidance, and a VAE
# decoder, three Python phases (PyTorch, CPU) trained on this machine.
# make build links them into bin/plugins; make run-t2v runs this config:
#   bin/supervisor run --config examples/configs/t2v-tiny.hcl --prompt "a red circle moving left"
# Prompts follow the grammar "a COLOUR SHAPE moving DIRECTION".
params = {
  threads = "1" # torch threads per process: the three phases share the cores
}

phase "encoder" {
  plugin = "t2v-encoder"
}

phase "transformer" {
  plugin = "t2v-transformer"
  params = {
    guidance = "4" # classifier-free guidance scale
  }
  checkpoint_every = 5 # a request whose transformer dies resumes at its last multiple of 5 steps
  # batch {            # denoise up to 8 requests in one DiT forward per step (about 1.3x the
  #   max_size = 8     # requests per second at 8 in flight on 2 CPUs), GIFs no longer the
  #   max_wait = "20ms" # unbatched ones byte for byte (the last bits of the latent differ)
  # }
}

phase "decoder" {
  plugin = "t2v-decoder"
}
