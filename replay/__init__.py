"""shiftstream's replayer: load an interaction log, order it by event time, publish it to Kafka."""
