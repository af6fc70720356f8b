"""Maestromotif: (describe the method and cite its paper; the method note lives in shared/methods/)."""
