"""Parity verification against fixtures produced by the official implementation."""

from foleyrt.verify.fixtures import CaseResult, Check, Fixtures, compare, run_manifest

__all__ = ["CaseResult", "Check", "Fixtures", "compare", "run_manifest"]
