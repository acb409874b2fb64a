class PaperCodec:
    name = "paper"
