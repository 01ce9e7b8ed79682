"""Storage formats shared by techniques: weight quantization schemes and their codes
(``schemes``), bit-packed low-bit files (``packed``), shared-value codebooks (``codebook``) and
bitmask-sparse weights (``sparse``)."""
