"""What the test folders share: a real HTTP server on loopback, checkpoints written as the authors' scripts wrote
them, image folders, the numerics judges, subprocess helpers and the tiny Vistas fixture."""
