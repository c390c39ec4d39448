"""Tests of gateway/core (config models and `safegw check`, with the hostile config corpus
in config_corpus/) and of the import graph of the whole code base."""
