# The built-in model at Wan2.1 text-to-video sizes: an 8 MiB context
# (512 x 4096 float32) and an 8.4 MB latent (16 x 21 x 60 x 104 float32)
# cross each hop. Every phase gets the same params from the top level.
params = {
  context_len = 512
  context_dim = 4096
  channels    = 16
  frames      = 21
  height      = 60
  width       = 104
}

phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin    = "transformer"
  instances = 2
}

phase "decoder" {
  plugin = "decoder"
}
