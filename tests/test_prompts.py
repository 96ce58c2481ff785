from training.prompts import last_block, normalize, prompt_id, question_key


def test_normalize_ignores_case_spacing_and_curly_quotes():
    assert normalize("  Janet’s  ducks\n lay EGGS ") == "janet's ducks lay eggs"


def test_prompt_id_is_stable_and_equal_for_equivalent_texts():
    assert prompt_id("What is 2+2?") == prompt_id("what  is 2+2?\n")
    assert prompt_id("What is 2+2?") != prompt_id("What is 2+3?")
    assert len(prompt_id("x")) == 16


def test_question_key_drops_few_shot_examples_and_options():
    prompt = (
        "Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\nAnswer:\nB\n\n"
        "Which planet is known as the red planet in our solar system?\nA) Mars\nB) Venus\nAnswer:"
    )
    assert last_block(prompt).startswith("Which planet")
    assert question_key(prompt) == "which planet is known as the red planet in our solar system?"


def test_question_key_is_none_for_questions_too_short_to_identify():
    assert question_key("A deer") is None
    assert question_key("") is None
