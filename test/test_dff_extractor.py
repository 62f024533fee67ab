
import numpy as np
import pytest
import torch

from face_alignment_ros.core.dff_extractor import DescriptorMap, DFFExtractor, bilinear_sample
from face_alignment_ros.core.dff_network import DFFConfig, DFFNet
from face_alignment_ros.core.face_crop import apply_affine, crop_image, image_to_crop

CFG = DFFConfig(input_size=32, base_width=4, depth=3)


def _map(d=3, n=5, seed=0):
    data = np.random.default_rng(seed).normal(size=(d, n, n)).astype(np.float32)
    return DescriptorMap(data)


def test_bilinear_exact_at_known_points():
    m = _map()
    D = m.data
    # grid points give the stored values
    assert np.allclose(m.sample([[2, 3]])[0], D[:, 3, 2])
    assert np.allclose(m.sample([[4, 4]])[0], D[:, 4, 4])  # last pixel is inside
    # hand computation at (x, y) = (1.25, 2.5)
    x, y = 1.25, 2.5
    ref = ((1 - 0.25) * (1 - 0.5) * D[:, 2, 1] + 0.25 * (1 - 0.5) * D[:, 2, 2]
           + (1 - 0.25) * 0.5 * D[:, 3, 1] + 0.25 * 0.5 * D[:, 3, 2])
    assert np.allclose(m.sample([[x, y]])[0], ref, atol=1e-6)
    # on the right edge, interpolating along y only
    ref = 0.7 * D[:, 1, 4] + 0.3 * D[:, 2, 4]
    assert np.allclose(m.sample([[4.0, 1.3]])[0], ref, atol=1e-6)


def test_outside_gives_zeros():
    m = _map()
    out = m.sample([[-0.01, 2], [2, 4.01], [np.nan, 1], [5, 5], [1, 1]])
    assert out.shape == (5, 3) and out.dtype == np.float32
    assert not out[:4].any() and out[4].any()


def test_crop_affine_corner_and_consistency():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, size=(200, 300, 3), dtype=np.uint8)
    box = (40.0, 30.0, 120.0, 110.0)  # 80 px -> 32 px crop
    crop, A = crop_image(img, box, 32)
    assert crop.shape == (32, 32, 3)
    assert np.allclose(apply_affine(A, [[40, 30]]), [[0, 0]])
    assert np.allclose(apply_affine(A, [[120, 110]]), [[32, 32]])
    # a bright dot in the image appears at its mapped crop position
    img = np.zeros((200, 300, 3), np.uint8)
    img[70:75, 80:85] = 255  # centre (82, 72)
    crop, A = crop_image(img, (50.0, 40.0, 114.0, 104.0), 64)  # scale 1: exact integer shift
    cx, cy = apply_affine(A, [[82, 72]])[0]
    ys, xs = np.nonzero(crop[:, :, 0] > 128)
    assert abs(xs.mean() - cx) < 0.5 and abs(ys.mean() - cy) < 0.5


def test_gray_image_and_border_replicate():
    img = np.full((50, 50), 77, np.uint8)
    crop, _ = crop_image(img, (-20, -20, 30, 30), 16)
    assert crop.shape == (16, 16, 3) and (crop == 77).all()


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return DFFExtractor(DFFNet(CFG), CFG, device="cpu")


def test_extractor_map_and_batch(extractor):
    img = np.random.default_rng(2).integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    boxes = [(10, 10, 74, 74), (60, 20, 140, 100)]
    crops = [crop_image(img, b, 32)[0] for b in boxes]
    m = extractor.descriptor_map(crops[0])
    assert m.data.shape == (32, 32, 32) and m.data.dtype == np.float32
    assert np.allclose(np.linalg.norm(m.data, axis=0), 1, atol=1e-4)
    maps = extractor.descriptor_maps(crops)
    assert len(maps) == 2 and extractor.descriptor_maps([]) == []
    assert np.allclose(maps[0].data, m.data, atol=1e-4)
    assert np.allclose(maps[1].data, extractor.descriptor_map(crops[1]).data, atol=1e-4)


def test_identity_box_crop_is_the_crop_itself():
    # The extractor once re-warped its input through an identity box (0, 0, N, N): that warp
    # returned the crop unchanged, so running on the crop directly gives the same descriptors.
    crop = np.random.default_rng(5).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    again, affine = crop_image(crop, (0.0, 0.0, 32.0, 32.0), 32)
    assert np.array_equal(again, crop) and np.allclose(affine, np.eye(2, 3))


def test_crop_affine_matches_point_and_camera_maps():
    box = np.array([40.0, 30.0, 120.0, 110.0], np.float32)
    _, affine = crop_image(np.zeros((200, 200, 3), np.uint8), box, 32)
    pts = np.array([[40.0, 30.0], [77.5, 91.25], [-3.0, 250.0]])
    assert np.allclose(apply_affine(affine, pts), image_to_crop(pts, box, 32), atol=1e-4)


def test_bilinear_sample_generic():
    hwd = np.arange(12, dtype=np.float32).reshape(3, 4, 1)  # value = 4*y + x
    pts = np.array([[0.5, 0.5], [3, 2], [2.2, 1.7]])
    assert np.allclose(bilinear_sample(hwd, pts)[:, 0], 4 * pts[:, 1] + pts[:, 0], atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_head_map_gives_the_networks_full_map_and_its_samples(stride):
    """``HeadDescriptorMap`` finishes the network (bilinear upsampling, L2 normalisation) from its
    head map: its full map is ``DFFNet.forward``'s output, and sampling it at points (4 map
    pixels each) gives what sampling that full map gives, zero outside."""
    from face_alignment_ros.core.dff_extractor import HeadDescriptorMap

    torch.manual_seed(stride)
    net = DFFNet(DFFConfig(input_size=32, base_width=4, depth=3, decoder_stride=stride)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)[0].permute(1, 2, 0).contiguous().numpy()
        head = net.head_map(x)[0].permute(1, 2, 0).numpy()
    assert head.shape == (32 // stride, 32 // stride, CFG.descriptor_dim)
    m = HeadDescriptorMap(head, 32)
    assert m.size == 32 and np.abs(m.full() - ref).max() < 1e-5
    assert m.data.shape == (CFG.descriptor_dim, 32, 32)
    rng = np.random.default_rng(stride)
    points = np.concatenate([rng.uniform(-2, 33, (300, 2)), [[0, 0], [31, 31], [31, 0], [0.5, 31], [np.nan, 4]]])
    got, want = m.sample(points), DescriptorMap(ref.transpose(2, 0, 1)).sample(points)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    assert np.array_equal(got == 0, want == 0)  # the same points outside


def test_torch_runtime_samples_from_head_maps_as_the_full_map_gives():
    """The torch runtime finishes the descriptor at the sampled points too (as ONNX Runtime
    with a schema-2 graph): the same samples as its full maps, for a batch of crops."""
    from face_alignment_ros.core.dff_extractor import HeadDescriptorMap

    torch.manual_seed(0)
    extractor = DFFExtractor(DFFNet(DFFConfig(input_size=32, base_width=4, depth=3, decoder_stride=2)), device="cpu")
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    maps = extractor.descriptor_maps(list(crops))
    assert all(isinstance(m, HeadDescriptorMap) for m in maps)
    full = extractor.run_crops(crops)
    points = np.random.default_rng(1).uniform(0, 31, (50, 2))
    for m, f in zip(maps, full):
        assert np.abs(m.sample(points) - DescriptorMap(f.transpose(2, 0, 1)).sample(points)).max() < 1e-5
