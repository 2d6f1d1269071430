from common.ids import is_detector_id, is_image_query_id, new_detector_id, new_image_query_id


def test_minted_ids_have_prefix_and_27_base62_characters() -> None:
    ids = {new_image_query_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        assert i.startswith("iq_") and len(i) == 30 and i[3:].isalnum()
        assert is_image_query_id(i)
    assert is_detector_id(new_detector_id())


def test_ids_sort_by_creation_second() -> None:
    assert new_image_query_id()[3:7] <= new_image_query_id()[3:7]
