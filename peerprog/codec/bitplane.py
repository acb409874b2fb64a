class BitplaneCodec:
    name = "bitplane"
