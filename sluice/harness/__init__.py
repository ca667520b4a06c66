"""The measurement harness: open-loop sender, output collector, chaos driver."""
