"""PixelByte: text and pixel images in one token stream."""
__version__ = "0.1.0"
