#!/usr/bin/env python3
"""Interop with PyJWT, driven by tests/auth.rs (`interop_*`).

  auth_interop.py mint SECRET RSA_PRIVATE_PEM WRONG_SECRET
      prints {"hs256": ..., "rs256": ..., "wrong_secret": ...}: tokens for
      sub "py", session "default", valid for 10 minutes
  auth_interop.py verify TOKEN SECRET
      verifies an HS256 token (e.g. from `mcp-hub token`) and prints its
      claims as JSON; exit 1 if PyJWT refuses it
"""
import json
import sys
import time

import jwt  # PyJWT (scripts/test installs it)


def claims():
    return {"sub": "py", "sessions": ["default"], "role": "client",
            "exp": int(time.time()) + 600}


def main(argv):
    if argv[1] == "mint":
        secret, pem_path, wrong = argv[2], argv[3], argv[4]
        with open(pem_path, "rb") as f:
            private = f.read()
        print(json.dumps({
            "hs256": jwt.encode(claims(), secret, algorithm="HS256"),
            "rs256": jwt.encode(claims(), private, algorithm="RS256"),
            "wrong_secret": jwt.encode(claims(), wrong, algorithm="HS256"),
        }))
        return 0
    if argv[1] == "verify":
        token, secret = argv[2], argv[3]
        try:
            print(json.dumps(jwt.decode(token, secret, algorithms=["HS256"])))
        except jwt.PyJWTError as e:
            print(f"refused: {e}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
