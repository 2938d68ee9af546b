"""The beyond-log-linear studies: neural policies, SGD stability and the KLDPO
temperature rule (``neural``, ``stability``, ``tau``; ``analysis`` turns their records
into the numbers the report states)."""
