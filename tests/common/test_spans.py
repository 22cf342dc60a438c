"""The two temporal IoUs of the official QVHighlights code, and span format conversion."""

import numpy as np

from trdetr_common.spans import hull_iou, span_cxw_to_xx, span_xx_to_cxw, temporal_iou_cross


def test_cross_iou_is_the_true_iou_of_every_pair():
    iou = temporal_iou_cross(np.array([[0, 0.2], [0.5, 1.0]]), np.array([[0, 0.3], [0.0, 1.0]]))
    np.testing.assert_allclose(iou, [[2 / 3, 0.2], [0.0, 0.5]])


def test_hull_iou_divides_by_the_hull_not_the_union():
    # [0, 2] and [4, 6] are disjoint: 0; [0, 4] and [2, 6]: intersection 2, hull 6 (union also 6).
    np.testing.assert_allclose(hull_iou(np.array([[0, 2], [0, 4]]), np.array([[4, 6], [2, 6]])), [0, 1 / 3])
    # a zero-length hull gives 0, not NaN.
    assert hull_iou(np.array([3.0, 3.0]), np.array([3.0, 3.0])) == 0.0


def test_span_format_round_trip():
    cxw = np.array([[0.5, 1.0], [0.3, 0.2]])
    np.testing.assert_allclose(span_cxw_to_xx(cxw), [[0.0, 1.0], [0.2, 0.4]])
    np.testing.assert_allclose(span_xx_to_cxw(span_cxw_to_xx(cxw)), cxw)
