"""Neural-network building blocks: Module, Parameter, Sequential, layers and initialisers."""
from . import init
from .layers import (GELU, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, ConvTranspose2d, Dropout, Flatten,
                     GlobalAvgPool2d, Identity, LayerNorm, LeakyReLU, Linear, MaxPool2d, PixelShuffle, ReLU,
                     ResidualBlock, Sigmoid, Softplus, Tanh, ViewAverage)
from .module import Module, Parameter, Sequential

__all__ = ["GELU", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "ConvTranspose2d", "Dropout", "Flatten",
           "GlobalAvgPool2d", "Identity", "LayerNorm", "LeakyReLU", "Linear", "MaxPool2d", "Module", "Parameter",
           "PixelShuffle", "ReLU", "ResidualBlock", "Sequential", "Sigmoid", "Softplus", "Tanh", "ViewAverage",
           "init"]
