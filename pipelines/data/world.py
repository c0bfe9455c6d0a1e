"""The pharmacy domain the generator draws from: therapeutic classes, their uses and molecules.

Kept apart from the sampling code so the vocabulary can grow without touching the simulation.
Names of manufacturers and brands are invented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TherapeuticClass:
    name: str
    uses: tuple[str, ...]
    molecules: tuple[tuple[str, tuple[str, ...]], ...]  # (molecule, strengths)
    forms: tuple[str, ...]
    prevalence: float  # share of users with a condition in this class
    chronic: bool  # users refill the same product
    rx: bool  # prescription required
    price_median: float


CLASSES: tuple[TherapeuticClass, ...] = (
    TherapeuticClass("Analgesic", ("fever", "headache", "body pain"),
                     (("Paracetamol", ("500mg", "650mg")), ("Ibuprofen", ("200mg", "400mg")),
                      ("Diclofenac", ("50mg",)), ("Aceclofenac", ("100mg",)), ("Caffeine", ("30mg",))),
                     ("tablet", "syrup", "gel"), 0.30, False, False, 45.0),
    TherapeuticClass("Antidiabetic", ("type 2 diabetes",),
                     (("Metformin", ("500mg", "1000mg")), ("Glimepiride", ("1mg", "2mg")),
                      ("Sitagliptin", ("50mg", "100mg")), ("Vildagliptin", ("50mg",))),
                     ("tablet",), 0.12, True, True, 180.0),
    TherapeuticClass("Antihypertensive", ("hypertension", "heart failure"),
                     (("Amlodipine", ("5mg", "10mg")), ("Telmisartan", ("40mg", "80mg")),
                      ("Losartan", ("50mg",)), ("Metoprolol", ("25mg", "50mg"))),
                     ("tablet",), 0.14, True, True, 120.0),
    TherapeuticClass("Lipid lowering", ("high cholesterol",),
                     (("Atorvastatin", ("10mg", "20mg")), ("Rosuvastatin", ("10mg", "20mg")),
                      ("Fenofibrate", ("160mg",))),
                     ("tablet",), 0.08, True, True, 160.0),
    TherapeuticClass("Antibiotic", ("bacterial infection", "urinary tract infection", "sore throat"),
                     (("Amoxicillin", ("250mg", "500mg")), ("Azithromycin", ("250mg", "500mg")),
                      ("Cefixime", ("200mg",)), ("Ciprofloxacin", ("500mg",)), ("Clavulanic Acid", ("125mg",))),
                     ("tablet", "capsule", "syrup"), 0.15, False, True, 110.0),
    TherapeuticClass("Antacid", ("acidity", "gerd", "indigestion"),
                     (("Pantoprazole", ("40mg",)), ("Omeprazole", ("20mg",)), ("Rabeprazole", ("20mg",)),
                      ("Domperidone", ("10mg",)), ("Magaldrate", ("400mg",))),
                     ("tablet", "capsule", "syrup"), 0.20, False, False, 70.0),
    TherapeuticClass("Antihistamine", ("allergy", "common cold", "allergic rhinitis"),
                     (("Cetirizine", ("10mg",)), ("Levocetirizine", ("5mg",)), ("Fexofenadine", ("120mg",)),
                      ("Montelukast", ("10mg",))),
                     ("tablet", "syrup"), 0.18, False, False, 60.0),
    TherapeuticClass("Cough and cold", ("cough", "common cold", "nasal congestion"),
                     (("Dextromethorphan", ("10mg",)), ("Ambroxol", ("30mg",)), ("Guaifenesin", ("100mg",)),
                      ("Phenylephrine", ("5mg",))),
                     ("syrup", "tablet", "lozenge"), 0.16, False, False, 85.0),
    TherapeuticClass("Thyroid", ("hypothyroidism",),
                     (("Levothyroxine", ("25mcg", "50mcg", "100mcg")),),
                     ("tablet",), 0.06, True, True, 140.0),
    TherapeuticClass("Vitamins and supplements", ("vitamin deficiency", "immunity", "bone health"),
                     (("Vitamin D3", ("60000IU", "1000IU")), ("Methylcobalamin", ("1500mcg",)),
                      ("Calcium Carbonate", ("500mg",)), ("Zinc", ("50mg",)), ("Vitamin C", ("500mg",))),
                     ("tablet", "capsule", "sachet"), 0.22, False, False, 150.0),
    TherapeuticClass("Dermatology", ("acne", "fungal infection", "dry skin"),
                     (("Clotrimazole", ("1%",)), ("Adapalene", ("0.1%",)), ("Ketoconazole", ("2%",)),
                      ("Benzoyl Peroxide", ("2.5%",))),
                     ("cream", "gel", "lotion"), 0.12, False, False, 130.0),
    TherapeuticClass("Diabetes care", ("type 2 diabetes", "blood sugar monitoring"),
                     (), ("device", "strips", "lancets"), 0.05, False, False, 650.0),
    TherapeuticClass("Personal care", ("hair care", "skin care", "oral care"),
                     (), ("shampoo", "soap", "toothpaste", "moisturizer"), 0.25, False, False, 220.0),
)

# Classes a user with a condition in the key class also buys from (cross-sell).
COMPLEMENTS: dict[str, tuple[str, ...]] = {
    "Antidiabetic": ("Diabetes care", "Lipid lowering"),
    "Antihypertensive": ("Lipid lowering", "Vitamins and supplements"),
    "Lipid lowering": ("Antihypertensive",),
    "Antibiotic": ("Antacid", "Vitamins and supplements"),
    "Analgesic": ("Antacid",),
    "Cough and cold": ("Antihistamine", "Analgesic"),
    "Antihistamine": ("Cough and cold",),
    "Dermatology": ("Personal care",),
    "Diabetes care": ("Antidiabetic",),
    "Thyroid": ("Vitamins and supplements",),
    "Vitamins and supplements": ("Personal care",),
    "Antacid": ("Analgesic",),
    "Personal care": ("Dermatology",),
}

MANUFACTURERS: tuple[str, ...] = tuple(
    f"{a} {b}"
    for a in ("Zenith", "Aurora", "Medisun", "Novacure", "Helix", "Sunvale", "Kairos", "Bluepeak",
              "Orion", "Vedanta", "Lotus", "Crestline")
    for b in ("Pharma", "Healthcare", "Lifesciences")
)

BRAND_SYLLABLES: tuple[str, ...] = (
    "ze", "ro", "max", "vi", "tal", "cu", "ra", "no", "fen", "dol", "pan", "zo", "lin", "mo", "tri",
    "ca", "lo", "ve", "xa", "sil", "dia", "bet", "glu", "cor", "pro", "neu", "fa", "mi", "ko", "ten",
)

PACK_SIZES: dict[str, tuple[str, ...]] = {
    "tablet": ("strip of 10 tablets", "strip of 15 tablets", "bottle of 30 tablets"),
    "capsule": ("strip of 10 capsules", "bottle of 30 capsules"),
    "syrup": ("bottle of 60 ml", "bottle of 100 ml"),
    "gel": ("tube of 30 gm",), "cream": ("tube of 15 gm", "tube of 30 gm"), "lotion": ("bottle of 100 ml",),
    "lozenge": ("pack of 8 lozenges",), "sachet": ("packet of 1 gm", "box of 4 sachets"),
    "device": ("1 kit",), "strips": ("box of 50 strips",), "lancets": ("box of 100 lancets",),
    "shampoo": ("bottle of 180 ml",), "soap": ("pack of 3 x 75 gm",), "toothpaste": ("tube of 100 gm",),
    "moisturizer": ("bottle of 200 ml",),
}

TAGS: tuple[str, ...] = (
    "bestseller", "sugar free", "ayurvedic", "doctor recommended", "generic", "imported", "combo pack",
    "fast acting", "family pack", "sensitive",
)
