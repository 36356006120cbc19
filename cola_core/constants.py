"""Numbers every layer shares, written once."""
import math

LN2 = math.log(2.0)               # nats per bit
LOG_2PI = math.log(2 * math.pi)   # Gaussian log-density constant
TIME_SCALE = 1000.0               # T: the DiT sees t in [0, T]; t = T is pure noise (spec sections 6-8)
