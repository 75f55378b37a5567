"""The MNIST CGN: generators for mask, texture and background, critics and data sets."""
