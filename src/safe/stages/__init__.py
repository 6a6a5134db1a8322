"""One function per stage (config in, result out); the command line maps commands onto them."""
