"""Turning a ScanReport into something people (rich console) or programs (JSON) read."""
