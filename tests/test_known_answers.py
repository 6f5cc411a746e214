"""Known answers from DESIGN.md: Philox, the packing example, numpy.packbits, and a
hand-computed nearest-rounding Moniqua example."""
import numpy as np
import torch

import moniqua_kernels as mk
from moniqua_kernels.reference.philox import philox_words


def test_philox_known_answer_counter0_key0():
    words = philox_words(4, seed=0, offset=0)
    assert [hex(w) for w in words.tolist()] == \
        ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


def test_philox_uniform_is_word_top24_bits():
    words = philox_words(4, seed=0, offset=0)
    u = mk.philox_uniform(4, seed=0, offset=0)
    assert u.dtype == torch.float32
    expected = [(w >> 8) / 2 ** 24 for w in words.tolist()]
    assert u.tolist() == expected  # exact: 24-bit integers times 2^-24


def test_philox_random123_known_answers():
    # Random123's published philox4x32_10 test vectors (kat_vectors).
    from moniqua_kernels.reference.philox import philox4x32_10
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    out = philox4x32_10(t(0xFFFFFFFF), t(0xFFFFFFFF), t(0xFFFFFFFF), t(0xFFFFFFFF),
                        0xFFFFFFFF, 0xFFFFFFFF)
    assert [int(o) for o in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    out = philox4x32_10(t(0x243F6A88), t(0x85A308D3), t(0x13198A2E), t(0x03707344),
                        0xA4093822, 0x299F31D0)
    assert [int(o) for o in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_stream_positions_are_offset_plus_index():
    whole = mk.philox_uniform(40, seed=123456789, offset=0)
    tail = mk.philox_uniform(20, seed=123456789, offset=16)
    assert torch.equal(whole[16:36], tail)


def test_seed_splits_into_low_and_high_key_words():
    # seed = k1 << 32 | k0; a uint64 seed and the int64 with the same bits agree.
    big = (0xDEADBEEF << 32) | 0x01234567
    signed = big - 2 ** 64
    assert torch.equal(mk.philox_uniform(8, big), mk.philox_uniform(8, signed))
    assert not torch.equal(mk.philox_uniform(8, big), mk.philox_uniform(8, 0x01234567))


def test_packing_example_from_design():
    codes = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
    payload = mk.pack_bits(codes, 2)
    assert payload.tolist() == [57, 3]
    assert torch.equal(mk.unpack_bits(payload, 2, 5), codes)


def test_one_bit_packing_equals_numpy_packbits_little():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 1023, 4099):
        bits = rng.integers(0, 2, n).astype(np.uint8)
        ours = mk.pack_bits(torch.from_numpy(bits), 1).numpy()
        assert np.array_equal(ours, np.packbits(bits, bitorder="little"))


def test_pack_unpack_roundtrip_all_widths_and_zero_high_bits():
    g = torch.Generator().manual_seed(1)
    for bits in (1, 2, 4, 8):
        for n in (0, 1, 3, 5, 8, 13, 1001):
            codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8)
            payload = mk.pack_bits(codes, bits)
            assert payload.numel() == (n * bits + 7) // 8
            assert torch.equal(mk.unpack_bits(payload, bits, n), codes)
            used = (n * bits) % 8
            if used:
                assert int(payload[-1]) >> used == 0  # unused high bits are zero


def test_moniqua_nearest_hand_computed():
    # B = 1, 2 bits, nearest: z = x mod 1 = [0.3, 0.7, 0.7, 0.0];
    # k = floor(4 z + 0.5) = [1, 3, 3, 0]; byte = 1 | 3<<2 | 3<<4 | 0<<6 = 61.
    x = torch.tensor([0.3, -0.3, 1.7, 2.0])
    payload = mk.moniqua_encode(x, 1.0, bits=2, rounding="nearest")
    assert payload.tolist() == [61]
    # Receiver's y: zh = k/4 = [.25, .75, .75, 0]; a = zh - y = [.05, 1.15, -1.15, -2.1];
    # centred mod 1 -> [.05, .15, -.15, -.1]; xh = y + that = [.25, -.25, 1.75, 2.0].
    y = torch.tensor([0.2, -0.4, 1.9, 2.1])
    xh = mk.moniqua_decode(payload, y, 1.0, bits=2, rounding="nearest")
    assert torch.allclose(xh, torch.tensor([0.25, -0.25, 1.75, 2.0]), atol=1e-6, rtol=0)
    assert (xh - x).abs().max() <= mk.moniqua_delta(2, "nearest") * 1.0 + 1e-6


def test_moniqua_dither_one_bit_hand_checked_against_philox():
    # 1 bit, dither, B = 2: k = floor(2 z + u), decode zh = (k + 0.5 - u) / 2.
    x = torch.tensor([0.1, 0.9, -0.5, 3.3])
    B = 2.0
    u = mk.philox_uniform(4, seed=7, offset=0)
    z = (x / B) - torch.floor(x / B)
    k = torch.floor(z * 2 + u).to(torch.int64) % 2
    payload = mk.moniqua_encode(x, B, bits=1, rounding="dither", seed=7)
    assert payload.tolist() == [int(sum(int(k[i]) << i for i in range(4)))]


def test_modulus_formula():
    assert mk.moniqua_delta(1, "dither") == 0.25
    assert mk.moniqua_delta(2, "stochastic") == 0.25
    assert mk.moniqua_delta(8, "nearest") == 2 ** -9
    assert mk.moniqua_modulus(1.0, 1, "dither") == 4.0  # B = 4 theta at 1 bit
    assert mk.moniqua_modulus(1.0, 2, "stochastic") == 4.0
    assert abs(mk.moniqua_modulus(0.3, 4, "nearest") - 0.6 / (1 - 2 / 32)) < 1e-15
