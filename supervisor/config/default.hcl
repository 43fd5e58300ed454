# The embedded default configuration of phased: the three built-in phases,
# one instance each, round robin, shared-memory transfers.
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin = "transformer"
  # Save the latent every 5 steps: a request whose transformer dies
  # resumes there on its next attempt, not at step 0.
  checkpoint_every = 5
}

phase "decoder" {
  plugin = "decoder"
}
