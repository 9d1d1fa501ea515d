"""The ask stages (proposal, quote, negotiation) are found in the languages CRMs are used in, and a
pipeline without one is named in ask_to_decision instead of being guessed at.

Hand CRM, as_of 2024-03-31:
  pipeline "Ventas" (a Spanish org): Prospección, Calificación, Propuesta de valor,
    Propuesta/Presupuesto, Negociación/Revisión, Contrato enviado, then Cerrada ganada / perdida.
    v1 won: Prospección 01-02, Propuesta de valor 01-05, Propuesta/Presupuesto 01-10,
            Negociación/Revisión 01-25, Contrato enviado 02-04, won 02-07 -> 28 days from the ask.
    v2 lost: Prospección 01-03, Propuesta/Presupuesto 01-20, lost 03-01 -> 41 days.
    The ask stages are Propuesta/Presupuesto and Negociación/Revisión ("Propuesta de valor" pitches
    value, it is no ask). The old fallback, the last two open stages, would have measured v1 from
    Negociación (13 days) and left v2 out.
  pipeline "Onboarding": Kickoff, Setup (no stage named like an ask).
    o1 won: Kickoff 01-05, Setup 01-20, won 02-01. Not measured: the table says why.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.analytics.coaching import ask_stages, ask_to_decision, is_ask_stage_name
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS
from etl.stages import PipelineStages, StageCatalog
from tests.etl.hand_frames import canonical

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 31)
SPANISH = ("Prospección", "Calificación", "Propuesta de valor", "Propuesta/Presupuesto", "Negociación/Revisión", "Contrato enviado")
CATALOG = StageCatalog(
    [
        PipelineStages("Ventas", SPANISH, won_stage="Cerrada ganada", lost_stage="Cerrada perdida"),
        PipelineStages("Onboarding", ("Kickoff", "Setup")),
    ]
)

# Salesforce's default opportunity stages as its translations name them.
ASKS_BY_LANGUAGE = {
    "en": (["Proposal/Price Quote", "Negotiation/Review"], ["Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers", "Perception Analysis"]),
    "es": (["Propuesta/Presupuesto", "Negociación/Revisión", "Cotización"], ["Prospección", "Calificación", "Análisis de necesidades", "Propuesta de valor", "Análisis de percepción"]),
    "fr": (["Proposition/Devis", "Négociation/Révision", "Offre envoyée"], ["Prospection", "Qualification", "Analyse des besoins", "Proposition de valeur"]),
    "de": (["Angebot/Preisangebot", "Verhandlung/Überprüfung"], ["Erkundung", "Qualifikation", "Bedarfsanalyse", "Wertangebot", "Entscheidungsträger identifizieren"]),
    "pt": (["Proposta/Cotação", "Negociação/Revisão", "Orçamento"], ["Prospecção", "Qualificação", "Análise de necessidades", "Proposta de valor"]),
    "it": (["Proposta/Preventivo", "Negoziazione/Revisione", "Trattativa"], ["Prospezione", "Qualificazione", "Analisi delle esigenze", "Proposta di valore"]),
    "nl": (["Voorstel/Prijsofferte", "Onderhandeling/Beoordeling"], ["Prospectie", "Kwalificatie", "Behoefteanalyse", "Waardepropositie"]),
}


@pytest.mark.parametrize("language", sorted(ASKS_BY_LANGUAGE))
def test_ask_stage_names_in_each_language(language):
    asks, others = ASKS_BY_LANGUAGE[language]
    assert [name for name in asks if not is_ask_stage_name(name)] == []
    assert [name for name in others if is_ask_stage_name(name)] == []


def _crm():
    rows = [
        ("v1", "Ventas", "2024-01-02", "Cerrada ganada", "won", "2024-02-07"),
        ("v2", "Ventas", "2024-01-03", "Cerrada perdida", "lost", "2024-03-01"),
        ("o1", "Onboarding", "2024-01-05", "Closed Won", "won", "2024-02-01"),
    ]
    deals = pd.DataFrame(rows, columns=["deal_id", "pipeline", "created_at", "stage", "status", "closed_at"])
    deals["created_at"] = pd.to_datetime(deals["created_at"])
    deals["closed_at"] = pd.to_datetime(deals["closed_at"])
    deals["crm_close_date"] = deals["closed_at"]
    defaults = dict(source_system="hand", source_file="deals.csv", source_row=1, owner="Ana", currency="USD",
                    amount=100.0, amount_reporting=100.0, push_count=0, has_history=True)
    deals = canonical(deals, DEAL_COLUMNS, defaults, "deals")
    events = [
        ("v1", "2024-01-02", "Prospección"), ("v1", "2024-01-05", "Propuesta de valor"),
        ("v1", "2024-01-10", "Propuesta/Presupuesto"), ("v1", "2024-01-25", "Negociación/Revisión"),
        ("v1", "2024-02-04", "Contrato enviado"), ("v1", "2024-02-07", "Cerrada ganada"),
        ("v2", "2024-01-03", "Prospección"), ("v2", "2024-01-20", "Propuesta/Presupuesto"), ("v2", "2024-03-01", "Cerrada perdida"),
        ("o1", "2024-01-05", "Kickoff"), ("o1", "2024-01-20", "Setup"), ("o1", "2024-02-01", "Closed Won"),
    ]
    history = pd.DataFrame(events, columns=["deal_id", "changed_at", "stage"])
    history["changed_at"] = pd.to_datetime(history["changed_at"])
    history["source_row"] = np.arange(2, len(history) + 2)
    history = canonical(history, DEAL_HISTORY_COLUMNS, {"source_file": "history.csv", "amount": 100.0, "amount_reporting": 100.0}, "history")
    return deals, prepare_history(deals, history, CATALOG)


def test_spanish_ask_stages_measure_the_real_time_to_decision():
    assert ask_stages(CATALOG) == {"Ventas": ("Propuesta/Presupuesto", "Negociación/Revisión"), "Onboarding": ()}
    deals, history = _crm()
    table = ask_to_decision(deals, history, CATALOG, AS_OF)
    ventas = table[(table["segment_type"] == "pipeline") & (table["segment"] == "Ventas") & (table["period"] == "all")]
    by_outcome = ventas.set_index("outcome")
    assert by_outcome.loc["won", "median_days"] == 28.0
    assert by_outcome.loc["lost", "median_days"] == 41.0
    assert (by_outcome.loc["all", "deals"], by_outcome.loc["all", "mean_days"]) == (2, 34.5)
    assert (ventas["note"] == "ask stages Propuesta/Presupuesto, Negociación/Revisión (found by name)").all()


def test_a_pipeline_without_an_ask_stage_is_named_not_guessed():
    deals, history = _crm()
    table = ask_to_decision(deals, history, CATALOG, AS_OF)
    onboarding = table[table["segment"] == "Onboarding"]
    assert len(onboarding) == 1
    row = onboarding.iloc[0]
    assert (row["period"], row["segment_type"], row["outcome"], row["deals"]) == ("all", "pipeline", "all", 0)
    assert pd.isna(row["median_days"]) and pd.isna(row["mean_days"]) and pd.isna(row["p90_days"])
    assert row["note"].startswith("no ask stage: none of Kickoff, Setup is named like a proposal, quote or negotiation")
    overall = table[(table["segment_type"] == "all") & (table["period"] == "all") & (table["outcome"] == "all")].iloc[0]
    assert overall["deals"] == 2  # v1, v2: o1 is not counted
    assert overall["note"] == "leaves out pipeline(s) without an ask stage: Onboarding"
    # Named in [analytics] ask_stages, Setup is measured: o1 entered it 01-20 and was won 02-01.
    configured = ask_to_decision(deals, history, CATALOG, AS_OF, configured_ask_stages=["Setup"])
    setup = configured[(configured["segment"] == "Onboarding") & (configured["outcome"] == "won") & (configured["period"] == "all")]
    assert setup["median_days"].tolist() == [12.0]
    assert setup["note"].tolist() == ["ask stages Setup ([analytics] ask_stages)"]
