"""The bundled SFT stage: load kept records, pre-flight them, fine-tune with TRL, export."""
