"""`make demo` (`python -m iabn_zoo.demo`): fine-tune a zoo network on real images offline and show what it reached
and what InPlace-ABN saved. May import anything in the library but the CLI."""
