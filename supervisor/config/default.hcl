# The embedded default configuration of phased: the three built-in phases,
# one instance each, round robin, shared-memory transfers.
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin = "transformer"
}

phase "decoder" {
  plugin = "decoder"
}
