"""shiftstream's streaming side: embedded broker, Faust worker, prequential metrics, sink.

Importing this package is cheap: Faust is only imported by ``stream.app``.
"""
