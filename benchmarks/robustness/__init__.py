"""Bad input through the command line: the table of every refused input and its one line."""
